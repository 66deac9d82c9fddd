"""Graceful scale-down: a worker told to stop finishes its phase, or hands it back when the drain
window ends, and loses nothing either way."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from api.client import ApiClient
from api.serve import free_port
from shared.db import transaction
from shared.errors import Drained
from shared.keys import create_key
from shared.settings import Settings
from tests.support.procs import Proc, api_process, worker_process
from tests.support.scenario import wait_terminal
from workers import drain
from workers.commands import run_command


@pytest.fixture
def draining_dir(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "drain"
    drain.configure(directory)
    yield directory
    drain._directory = None


def test_a_process_is_not_draining_until_its_worker_begins_to_stop(draining_dir: Path) -> None:
    assert not drain.requested()
    drain.begin(60)
    assert drain.requested()
    assert not drain.overdue()


def test_a_stale_marker_of_a_reused_pid_is_cleared_when_the_worker_starts(draining_dir: Path) -> None:
    (draining_dir / f"{os.getpid()}.drain").write_text(repr(time.time() - 5))
    assert drain.overdue()
    drain.configure(draining_dir)
    assert not drain.requested()


def test_a_command_still_running_when_the_drain_window_ends_is_stopped(
    draining_dir: Path, tmp_path: Path
) -> None:
    drain.begin(0.3)
    started = time.monotonic()
    with pytest.raises(Drained, match="drain window"):
        run_command("sleep 30", tmp_path, timeout=60, max_bytes=1000)
    assert time.monotonic() - started < 5


def test_a_command_that_ends_inside_the_drain_window_keeps_its_result(
    draining_dir: Path, tmp_path: Path
) -> None:
    drain.begin(30)
    result = run_command("sleep 0.2; echo done", tmp_path, timeout=60, max_bytes=1000)
    assert result.ok and result.output.strip() == "done"


def _spec(repo: Path, first_command: str) -> dict[str, Any]:
    return {
        "repo": str(repo),
        "phases": [
            {"name": "long", "scope": ["src/"], "command": first_command},
            {"name": "after", "scope": ["src/"], "command": "echo 1 > src/after.py"},
        ],
    }


def _wait_for_file(path: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.05)


def _terminate_main_process(worker: Proc, timeout: float) -> float:
    """SIGTERM to the worker's main process only, as the kubelet sends it; seconds until it exited."""
    started = time.monotonic()
    os.kill(worker.pid, signal.SIGTERM)
    code = worker.popen.wait(timeout)
    assert code == 0, worker.output()[-3000:]
    return time.monotonic() - started


@dataclass
class Stopped:
    seconds_to_exit: float
    after_stop: dict[str, Any]
    """The run as the stopped worker left it."""
    final: dict[str, Any]
    """The run once a successor worker on another host has finished it."""


def _stop_worker_mid_phase(
    settings: Settings, repo: Path, tmp_path: Path, command: str, marker: Path
) -> Stopped:
    """Submit a 2-phase run, SIGTERM its worker once `marker` shows phase 1 running; finish it elsewhere.

    The command signals the test through a file outside its worktree, which a box forbids by design,
    so these workers run unboxed (explicitly); boxed commands are drained in the tests above."""
    settings = settings.model_copy(update={"sandbox": "none"})
    with transaction(settings.database_url) as session:
        _, key = create_key(session, "drain")
    with api_process(settings, free_port(), tmp_path) as url:
        client = ApiClient(url, key)
        with worker_process(settings, "stopping", tmp_path) as stopping:
            run_id = client.submit(_spec(repo, command))["id"]
            _wait_for_file(marker)
            took = _terminate_main_process(stopping, timeout=60)
        after_stop = client.run(run_id)
        with worker_process(settings, "successor", tmp_path, workspace=tmp_path / "host2"):
            final = wait_terminal(client, [run_id], timeout=60)[0]
    return Stopped(took, after_stop, final)


@pytest.mark.fleet
def test_a_stopping_worker_finishes_its_phase_and_the_next_phase_goes_to_another_worker(
    fleet_settings: Settings, sample_repo: Path, tmp_path: Path
) -> None:
    started = tmp_path / "started"
    settings = fleet_settings.model_copy(update={"drain_seconds": 60})
    command = f"touch {started}; sleep 2; echo 1 > src/long.py"
    stopped = _stop_worker_mid_phase(settings, sample_repo, tmp_path, command, started)
    assert stopped.seconds_to_exit < 30, "the worker waited for the drain window instead of the phase"
    assert [p["state"] for p in stopped.after_stop["phases"]] == ["COMPLETE", "QUEUED"]
    assert stopped.final["state"] == "DONE_SUCCESS"
    long = stopped.final["phases"][0]
    assert [a["outcome"] for a in long["attempt_log"]] == ["SUCCESS"]
    assert long["deliveries"] == 1


@pytest.mark.fleet
def test_a_stopping_worker_hands_back_a_phase_that_outlasts_the_drain_window_without_spending_an_attempt(
    fleet_settings: Settings, sample_repo: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "first-delivery-is-slow"
    slow_once = f"if [ ! -e {marker} ]; then touch {marker}; sleep 120; fi; echo 1 > src/long.py"
    settings = fleet_settings.model_copy(update={"drain_seconds": 1})
    stopped = _stop_worker_mid_phase(settings, sample_repo, tmp_path, slow_once, marker)
    assert stopped.seconds_to_exit < 15, "the drain window did not cut the phase's command short"
    handed_back = stopped.after_stop["phases"][0]
    assert handed_back["state"] == "QUEUED"
    assert "drain window" in handed_back["failure_reason"]
    assert handed_back["attempt_log"] == [] and handed_back["deliveries"] == 0
    assert stopped.final["state"] == "DONE_SUCCESS"
    long = stopped.final["phases"][0]
    assert [a["outcome"] for a in long["attempt_log"]] == ["SUCCESS"]
    assert long["deliveries"] == 1
