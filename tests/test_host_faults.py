"""A fault of the host is not a fault of the phase: it is handed back with no attempt spent, and a host
that keeps faulting takes itself out of the queue, says why, probes itself, and comes back.

Real `autopack worker` processes on Postgres and Redis; the broken host's git is tests/support/gitshim.py
failing the worktree steps as a host with a broken disk or git state would.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from api.client import ApiClient
from api.serve import free_port
from shared.db import transaction
from shared.keys import create_key
from shared.settings import Settings
from tests.conftest import SESSION_QUEUE
from tests.support.gitshim import GitShim
from tests.support.procs import Proc, api_process, worker_process
from tests.support.scenario import wait_terminal
from workers.celery_app import create_app

pytestmark = pytest.mark.fleet

BROKEN_STEPS = ("worktree-add", "reset")


def spec(repo: Path, k: int) -> dict[str, Any]:
    return {
        "repo": str(repo),
        "name": f"host-{k}",
        "config": {"max_attempts": 1, "doctor": False},
        "phases": [
            {
                "name": f"p{i}",
                "scope": ["src/"],
                "command": f"echo {k}{i} > src/h{k}_{i}.py",
                "validation": ["true"],
            }
            for i in range(2)
        ],
    }


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return value


def pids(worker: Proc) -> set[str]:
    """The pids of a worker's prefork children, as they appear in an attempt's `worker` (host/pid/id)."""
    return {str(c.pid) for c in psutil.Process(worker.pid).children(recursive=True)}


def key_for(settings: Settings) -> str:
    with transaction(settings.database_url) as session:
        return create_key(session, "hosts", admin=True)[1]


def broken_host(tmp_path: Path) -> GitShim:
    shim = GitShim.install(tmp_path / "shim")
    for step in BROKEN_STEPS:
        shim.fail(step)
    return shim


def test_a_host_fault_hands_the_phase_back_spending_no_attempt_and_another_host_completes_it(
    fleet_settings: Settings, sample_repo: Path, tmp_path: Path
) -> None:
    settings = fleet_settings.model_copy(update={"redispatch_after_seconds": 1, "host_fault_threshold": 50})
    shim = broken_host(tmp_path)
    with api_process(settings, free_port(), tmp_path) as url:
        client = ApiClient(url, key_for(settings))
        with worker_process(settings, "broken", tmp_path, 1, tmp_path / "broken-host", shim.env()):
            run_id = client.submit(spec(sample_repo, 0))["id"]
            first = wait_for(lambda: _handed_back_twice(client, run_id), 30, "two hand-backs")
        assert first["attempt_log"] == [], "a host fault must not spend the phase's attempt"
        assert "simulated host fault" in first["failure_reason"]
        assert "phase handed back" in first["failure_reason"]
        with worker_process(settings, "healthy", tmp_path, 1, tmp_path / "healthy-host") as healthy:
            run = wait_terminal(client, [run_id], timeout=60)[0]
            healthy_pids = pids(healthy)
    assert run["state"] == "DONE_SUCCESS", run["failure_reason"]
    for phase in run["phases"]:
        assert [a["outcome"] for a in phase["attempt_log"]] == ["SUCCESS"]
        assert phase["attempt_log"][0]["worker"].split("/")[1] in healthy_pids


def _handed_back_twice(client: ApiClient, run_id: int) -> dict[str, Any] | None:
    phase: dict[str, Any] = client.run(run_id)["phases"][0]
    return phase if phase["deliveries"] >= 2 and phase["state"] == "QUEUED" else None


def _host(client: ApiClient, node: str) -> dict[str, Any] | None:
    return next((h for h in client.fleet()["hosts"] if h["name"] == node), None)


@pytest.mark.timeout(180)
def test_a_sick_host_stops_consuming_says_why_and_a_healthy_host_finishes_every_run(
    fleet_settings: Settings, sample_repo: Path, tmp_path: Path
) -> None:
    settings = fleet_settings.model_copy(
        update={
            "redispatch_after_seconds": 1,
            "host_fault_threshold": 2,
            "host_probe_seconds": 1,
            "max_deliveries": 6,
        }
    )
    shim = broken_host(tmp_path)
    celery = create_app(settings)
    with api_process(settings, free_port(), tmp_path) as url:
        client = ApiClient(url, key_for(settings))
        with worker_process(settings, "sick", tmp_path, 2, tmp_path / "sick-host", shim.env()) as sick:
            ids = [client.submit(spec(sample_repo, k))["id"] for k in range(4)]
            node = wait_for(lambda: _sick_node(client), 60, "the broken host to turn sick")
            with worker_process(settings, "well", tmp_path, 2, tmp_path / "well-host") as well:
                runs = wait_terminal(client, ids, timeout=90)
                well_pids = pids(well)

            queues = celery.control.inspect(destination=[node], timeout=2).active_queues() or {}
            host = _host(client, node)
            log = sick.output()

            # Healed: the next probe passes and it consumes again, alone.
            for step in BROKEN_STEPS:
                shim.fail(step, on=False)
            wait_for(lambda: (_host(client, node) or {}).get("state") == "HEALTHY", 30, "a passing probe")
            later = wait_terminal(client, [client.submit(spec(sample_repo, 9))["id"]], timeout=60)[0]
            sick_pids = pids(sick)

    for run in runs:
        assert run["state"] == "DONE_SUCCESS", run["failure_reason"]
        for phase in run["phases"]:
            assert [a["outcome"] for a in phase["attempt_log"]] == ["SUCCESS"]
            assert phase["attempt_log"][0]["worker"].split("/")[1] in well_pids
    assert len(runs) == 4
    assert queues.get(node) == [], f"a sick host must not consume {SESSION_QUEUE}: {queues}"
    assert host is not None and host["state"] == "SICK"
    assert "simulated host fault" in host["reason"] and host["sick_since"] is not None
    assert host["last_probe_error"] and "host probe failed" in host["last_probe_error"]
    assert re.search(r"is sick after \d+ host fault\(s\) in a row; stopped consuming phases", log)
    assert "is healthy again (the host probe passed)" in sick.output()
    assert later["state"] == "DONE_SUCCESS"
    assert all(p["attempt_log"][0]["worker"].split("/")[1] in sick_pids for p in later["phases"])


def _sick_node(client: ApiClient) -> str | None:
    return next((h["name"] for h in client.fleet()["hosts"] if h["state"] == "SICK"), None)
