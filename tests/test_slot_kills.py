"""A worker SIGKILLed inside each git step it runs loses no phase and poisons no slot.

A real `autopack worker` runs with tests/support/gitshim.py in front of git: each armed step kills
the prefork child that ran it, together with that git, partway through (as a host crash or an OOM
kill of the worker's cgroup does). Celery's main process forks a new child, the run's lease expires,
the reconciler re-dispatches, and the next provisioning of the same slots must succeed. Every phase
must then end with exactly one SUCCESS attempt: a kill is the host's fault, never the phase's.
"""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from api.client import ApiClient
from api.serve import free_port
from shared.db import transaction
from shared.keys import create_key
from shared.settings import Settings
from tests.support.gitshim import WORKER_STEPS, GitShim
from tests.support.procs import api_process, worker_process
from tests.support.scenario import branch_subjects, wait_terminal
from workers.workspace import WorkspaceManager

pytestmark = pytest.mark.fleet

STEPS = [s for s in WORKER_STEPS if s != "fetch"]  # round 0 clones; round 1 fetches instead


def spec(repo: Path, k: int) -> dict[str, Any]:
    return {
        "repo": str(repo),
        "name": f"killed-{k}",
        "config": {"max_attempts": 1, "doctor": False},
        "phases": [
            {
                "name": f"p{i}",
                "scope": ["src/"],
                "command": f"echo 'K = \"{k}-{i}\"' > src/k{k}_{i}.py",
                "validation": ["true"],
                "deliverables": [f"src/k{k}_{i}.py"],
            }
            for i in range(2)
        ],
    }


def new_base(repo: Path, k: int, files: int = 0) -> None:
    """A commit the worker's mirror lacks, so the next run's first provisioning must fetch; `files`
    more files make a checkout take long enough for a kill to land inside it."""
    (repo / f"base-{k}.txt").write_text(f"{k}\n")
    for n in range(files):
        (repo / "data" / f"{k}-{n}.txt").parent.mkdir(exist_ok=True)
        (repo / "data" / f"{k}-{n}.txt").write_text(f"{n}\n" * 20)
    git = ["git", "-C", str(repo), "-c", "user.name=T", "-c", "user.email=t@localhost"]
    subprocess.run([*git, "add", "--all"], check=True)
    subprocess.run([*git, "commit", "--quiet", "-m", f"base {k}"], check=True)


def worktree_listing(workspace: Path) -> str:
    mirrors = sorted((workspace / "mirrors").glob("*.git"))
    assert mirrors, "the worker made no mirror"
    out = [
        subprocess.run(
            ["git", "--git-dir", str(m), "worktree", "list", "--porcelain"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        for m in mirrors
    ]
    return "".join(out)


@pytest.mark.timeout(240)
def test_a_worker_killed_inside_every_git_step_loses_no_phase_and_every_slot_provisions_again(
    fleet_settings: Settings, sample_repo: Path, tmp_path: Path
) -> None:
    settings = fleet_settings.model_copy(
        update={
            "lease_ttl_seconds": 3,
            "redispatch_after_seconds": 1,
            "max_deliveries": 8,
            "worktrees_per_repo": 2,
            "host_fault_threshold": 0,  # kills are not host faults; keep the guard out of this test
        }
    )
    shim = GitShim.install(tmp_path / "shim")
    rng = random.Random(20261130)
    workspace = tmp_path / "host"
    with transaction(settings.database_url) as session:
        _, key = create_key(session, "kills")
    ids: list[int] = []
    fired: list[str] = []
    with (
        api_process(settings, free_port(), tmp_path) as url,
        worker_process(settings, "killed", tmp_path, concurrency=2, workspace=workspace, env=shim.env()),
    ):
        client = ApiClient(url, key)
        # Two rounds: killed at once (git barely started), then a few milliseconds in.
        for round_no, (low, high) in enumerate([(0.0, 0.0), (0.002, 0.02)]):
            for step in STEPS if round_no == 0 else ["fetch", *STEPS[1:]]:
                shim.kill(step, rng.uniform(low, high))
            if round_no:  # idle now: drop the slots' directories, so the round needs `worktree add` again
                for slot in (workspace / "worktrees").glob("*/slot-*[0-9]"):
                    shutil.rmtree(slot)
            new_base(sample_repo, round_no, files=1500)
            batch = [client.submit(spec(sample_repo, 10 * round_no + k))["id"] for k in range(6)]
            runs = wait_terminal(client, batch, timeout=100)
            never = shim.armed()
            assert never == [], f"round {round_no}: steps never reached: {never}\n{shim.calls(never)[-3000:]}"
            fired = shim.fired()
            ids += batch
            for run in runs:
                assert run["state"] == "DONE_SUCCESS", (round_no, run["failure_reason"])
        runs = [client.run(i) for i in ids]
    assert sorted(set(fired)) == sorted([*STEPS, "fetch"])
    assert len(fired) == 2 * len(STEPS)

    phases = [p for r in runs for p in r["phases"]]
    assert len(phases) == 24
    for phase in phases:
        # A kill never spends an attempt: the only attempt is the one that succeeded.
        assert [a["outcome"] for a in phase["attempt_log"]] == ["SUCCESS"], phase
    assert sum(p["deliveries"] for p in phases) >= len(phases) + 2  # kills cost redeliveries, seen
    for run in runs:
        assert branch_subjects(sample_repo, run) == [
            f"autopack: run {run['id']} phase {i} p{i}" for i in range(2)
        ]
    WorkspaceManager(workspace, 2).prune()
    listing = worktree_listing(workspace)
    assert "locked" not in listing and "prunable" not in listing
