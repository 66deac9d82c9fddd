"""Recovery: a killed worker's run is taken over after its lease expires; a lagging branch is repaired."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from api.client import ApiClient
from api.serve import free_port
from shared.db import transaction
from shared.keys import create_key
from shared.settings import Settings
from tests.support.procs import api_process, worker_process
from tests.support.scenario import wait_terminal
from workers.celery_app import CeleryDispatcher, create_app
from workers.runtime import Reconciler

pytestmark = pytest.mark.fleet


def rev(repo: Path, ref: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "rev-parse", ref], check=True, capture_output=True, text=True
    ).stdout.strip()


def test_run_of_a_sigkilled_worker_is_finished_by_another_after_the_lease_expires(
    fleet_settings: Settings, sample_repo: Path, tmp_path: Path
) -> None:
    # The command tells the test it started through a file outside its worktree, which a box forbids
    # by design: these workers run unboxed (explicitly). Boxed commands die with a SIGKILLed worker
    # in tests/test_sandbox.py.
    fleet_settings = fleet_settings.model_copy(update={"sandbox": "none"})
    marker = tmp_path / "first-delivery-hangs"
    hang_once = f"if [ ! -e {marker} ]; then touch {marker}; sleep 120; fi; echo ok > src/ok.py"
    spec = {
        "repo": str(sample_repo),
        "phases": [
            {"name": "hangs-once", "scope": ["src/"], "command": hang_once},
            {"name": "after", "scope": ["src/"], "command": "echo 1 > src/after.py"},
        ],
    }
    with transaction(fleet_settings.database_url) as session:
        _, key = create_key(session, "recovery")
    with api_process(fleet_settings, free_port(), tmp_path) as url:
        client = ApiClient(url, key)
        with worker_process(fleet_settings, "doomed", tmp_path) as doomed:
            run_id = client.submit(spec)["id"]
            deadline = time.monotonic() + 30
            while not marker.exists():
                assert time.monotonic() < deadline, "the phase never started"
                time.sleep(0.05)
            doomed.stop(signal.SIGKILL)
        assert client.run(run_id)["phases"][0]["state"] == "EXECUTING"
        with worker_process(fleet_settings, "rescuer", tmp_path, workspace=tmp_path / "other-host"):
            run = wait_terminal(client, [run_id], timeout=90)[0]
    assert run["state"] == "DONE_SUCCESS"
    first = run["phases"][0]
    assert first["deliveries"] == 2
    assert [a["outcome"] for a in first["attempt_log"]] == ["SUCCESS"]
    assert rev(sample_repo, run["result_branch"]) == run["head_sha"]


def test_reconciler_moves_a_result_branch_left_behind_by_a_crash(
    embedded_settings: Settings, sample_repo: Path
) -> None:
    from api.serve import api_in_thread
    from workers.embedded import embedded_fleet

    spec = {
        "repo": str(sample_repo),
        "phases": [{"name": "a", "scope": ["src/"], "command": "echo 1 > src/a.py"}],
    }
    with embedded_fleet(embedded_settings, 1) as celery, api_in_thread(embedded_settings, celery) as url:
        client = ApiClient(url, None)
        run = wait_terminal(client, [client.submit(spec)["id"]], timeout=60)[0]
    # The crash window: the phase is recorded but the branch never moved.
    subprocess.run(
        ["git", "-C", str(sample_repo), "update-ref", f"refs/heads/{run['result_branch']}", run["base_sha"]],
        check=True,
    )
    engine = sa.create_engine(embedded_settings.database_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE runs SET branch_sha = NULL"))
    assert rev(sample_repo, run["result_branch"]) == run["base_sha"]
    Reconciler(embedded_settings, CeleryDispatcher(create_app(embedded_settings))).run_once()
    assert rev(sample_repo, run["result_branch"]) == run["head_sha"]
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT branch_sha FROM runs")).scalar_one() == run["head_sha"]


def test_a_run_whose_branch_another_database_wrote_ends_failed_saying_where_its_result_is(
    embedded_settings: Settings, sample_repo: Path
) -> None:
    from api.serve import api_in_thread
    from workers.embedded import embedded_fleet

    # `autopack/run-1` of another database: history this run's commits will never descend from.
    git = ["git", "-C", str(sample_repo), "-c", "user.name=O", "-c", "user.email=o@localhost"]
    subprocess.run([*git, "checkout", "--quiet", "--orphan", "autopack/run-1"], check=True)
    subprocess.run([*git, "commit", "--quiet", "--allow-empty", "-m", "another database's run 1"], check=True)
    subprocess.run([*git, "checkout", "--quiet", "main"], check=True)
    foreign = rev(sample_repo, "autopack/run-1")
    spec = {
        "repo": str(sample_repo),
        "phases": [{"name": "a", "scope": ["src/"], "command": "echo 1 > src/a.py", "validation": ["true"]}],
    }
    with embedded_fleet(embedded_settings, 1) as celery, api_in_thread(embedded_settings, celery) as url:
        client = ApiClient(url, None)
        run = wait_terminal(client, [client.submit(spec)["id"]], timeout=60)[0]

    assert run["id"] == 1 and run["state"] == "DONE_FAILED"
    assert run["phases"][0]["state"] == "COMPLETE"
    assert "result branch not moved" in run["failure_reason"]
    assert "Another Autopack database" in run["failure_reason"] and run["head_sha"] in run["failure_reason"]
    assert rev(sample_repo, "autopack/run-1") == foreign  # never overwritten
    assert rev(sample_repo, "refs/autopack/run-1/phase-0-e1") == run["head_sha"]  # the result is kept
