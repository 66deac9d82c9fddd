"""Fleet mode for real: an `autopack api` process and two `autopack worker` processes (separate workspaces,
as on two hosts) on local Postgres and Redis."""

from __future__ import annotations

from pathlib import Path

import pytest

from api.client import ApiClient
from api.serve import free_port
from shared.db import transaction
from shared.keys import create_key
from shared.settings import Settings
from tests.support.procs import api_process, worker_process
from tests.support.scenario import check_scenario, submit_runs, wait_terminal

pytestmark = pytest.mark.fleet


def test_two_worker_processes_run_six_runs_of_three_phases_in_parallel_and_in_order(
    fleet_settings: Settings, sample_repo: Path, tmp_path: Path
) -> None:
    with transaction(fleet_settings.database_url) as session:
        _, key = create_key(session, "fleet-test")
    with (
        api_process(fleet_settings, free_port(), tmp_path) as url,
        worker_process(fleet_settings, "w1", tmp_path, workspace=tmp_path / "host1"),
        worker_process(fleet_settings, "w2", tmp_path, workspace=tmp_path / "host2"),
    ):
        client = ApiClient(url, key)
        ids = submit_runs(client, sample_repo, 6)
        runs = wait_terminal(client, ids, timeout=240)
    check_scenario(sample_repo, runs)
    # Both "hosts" executed phases: each grew its own mirror and worktree pool, and phases of one run
    # crossed hosts through the pushed refs.
    for host in ("host1", "host2"):
        assert list((tmp_path / host / "worktrees").glob("*/slot-*/.git")), f"{host} executed nothing"
    executors = {a["worker"] for r in runs for p in r["phases"] for a in p["attempt_log"]}
    assert len({w.rsplit("/", 1)[0] for w in executors}) >= 2
