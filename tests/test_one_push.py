"""One push per phase: the run branch moves with the next phase's push, observed at the git process
boundary (a logging `git` first on PATH) and in the origin's refs, on the embedded fleet."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from api.client import ApiClient
from api.serve import api_in_thread
from shared.db import transaction
from shared.models import Run
from shared.settings import Settings
from tests.support.scenario import wait_terminal
from tests.test_pipeline import run_to_end, spec
from workers.embedded import embedded_fleet


@pytest.fixture
def push_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every push the workers make, one line each (the worker's git is this one). The sample repository
    is a local origin, so a push is the `update-ref --stdin` the worker runs in it (workers/local_push.py):
    its commands are logged, joined by ";"."""
    log = tmp_path / "pushes.log"
    shim = tmp_path / "bin" / "git"
    shim.parent.mkdir()
    real = shutil.which("git")
    shim.write_text(
        "#!/bin/bash\n"
        'if [[ " $* " == *" update-ref --stdin "* && " $* " != */mirrors/* ]]; then\n'
        f'  input=$(cat); paste -sd";" <<<"$input" >> {log}\n'
        f'  exec {real} "$@" <<<"$input"\n'
        "fi\n"
        f'case " $* " in *" push "*) echo "$*" >> {log};; esac\n'
        f'exec {real} "$@"\n'
    )
    shim.chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim.parent}{os.pathsep}{os.environ['PATH']}")
    log.touch()
    return log


def pushed(log: Path) -> list[dict[str, str | None]]:
    """Each push as {ref: its new value, None for a deletion}."""
    out: list[dict[str, str | None]] = []
    for line in log.read_text().splitlines():
        commands = [c.split() for c in line.split(";") if c.strip()]
        out.append({c[1]: (None if c[0] == "delete" else c[2]) for c in commands})
    return out


def phase_ref(push: dict[str, str | None], run_id: int, k: int) -> str:
    return next(ref for ref in push if ref.startswith(f"refs/autopack/run-{run_id}/phase-{k}-e"))


@pytest.fixture
def client(embedded_settings: Settings, push_log: Path) -> Iterator[ApiClient]:
    with embedded_fleet(embedded_settings, 2) as celery, api_in_thread(embedded_settings, celery) as url:
        yield ApiClient(url, None)


def origin_refs(origin: Path, run_id: int) -> dict[str, str]:
    out = subprocess.run(
        [
            "git",
            "-C",
            str(origin),
            "for-each-ref",
            "--format=%(refname) %(objectname)",
            f"refs/heads/autopack/run-{run_id}",
            f"refs/autopack/run-{run_id}/",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(line.split(" ") for line in out.splitlines())


def writes(n: int) -> list[dict[str, str]]:
    return [{"command": f"echo {i} > src/step_{i}.py"} for i in range(n)]


def test_a_three_phase_run_pushes_four_times_and_each_push_moves_the_branch_to_the_last_head(
    client: ApiClient, sample_repo: Path, push_log: Path
) -> None:
    run = run_to_end(client, spec(sample_repo, *writes(3)))
    assert run["state"] == "DONE_SUCCESS"
    shas = [p["commit_sha"] for p in run["phases"]]
    pushes = pushed(push_log)
    branch = f"refs/heads/autopack/run-{run['id']}"
    assert len(pushes) == 4, pushes  # two per phase before: phase ref, then the branch
    for k in (1, 2):  # phase k's push carries phase k-1's head to the branch and drops its ref
        assert pushes[k][phase_ref(pushes[k], run["id"], k)] == shas[k]
        assert pushes[k][branch] == shas[k - 1]
        assert pushes[k][phase_ref(pushes[k], run["id"], k - 1)] is None
    last_ref = phase_ref(pushes[2], run["id"], 2)
    assert pushes[3] == {branch: shas[2], last_ref: None}, "the last phase's move"
    assert origin_refs(sample_repo, run["id"]) == {branch: shas[2]}, "no phase ref is left behind"


def test_a_run_that_fails_mid_way_has_its_branch_settled_at_the_last_recorded_head(
    client: ApiClient, sample_repo: Path, push_log: Path
) -> None:
    body = spec(sample_repo, *writes(2), {"command": "exit 3"}, max_attempts=1)
    run = run_to_end(client, body)
    assert run["state"] == "DONE_FAILED" and run["head_sha"] == run["phases"][1]["commit_sha"]
    branch = f"refs/heads/autopack/run-{run['id']}"
    deadline = time.monotonic() + 20  # the reconciler (every second here) moves it
    while origin_refs(sample_repo, run["id"]).get(branch) != run["head_sha"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert origin_refs(sample_repo, run["id"]).get(branch) == run["head_sha"]
    assert len(pushed(push_log)) >= 3


def test_the_database_notes_where_each_push_left_the_branch(
    client: ApiClient, sample_repo: Path, embedded_settings: Settings, push_log: Path
) -> None:
    """While phase 2 runs, the branch is at phase 0's commit (phase 1's push moved it there), and
    `runs.branch_sha` says so: the note rides on phase 1's success, in the same fenced transaction."""
    body = spec(sample_repo, *writes(2), {"command": "sleep 3 && echo 2 > src/step_2.py"})
    run_id = client.submit(body)["id"]
    deadline = time.monotonic() + 30
    while (run := client.run(run_id))["phases"][2]["state"] != "EXECUTING" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert run["phases"][2]["state"] == "EXECUTING", run
    with transaction(embedded_settings.database_url) as session:
        noted = session.scalar(select(Run.branch_sha).where(Run.id == run_id))
    branch = origin_refs(sample_repo, run_id).get(f"refs/heads/autopack/run-{run_id}")
    assert noted == branch == run["phases"][0]["commit_sha"] != run["head_sha"]
    (done,) = wait_terminal(client, [run_id], timeout=60)
    assert done["state"] == "DONE_SUCCESS"
