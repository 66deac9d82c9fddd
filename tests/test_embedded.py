"""Embedded mode: SQLite, the in-process broker and worker threads, through the real HTTP API."""

from __future__ import annotations

from pathlib import Path

from api.client import ApiClient
from api.serve import api_in_thread
from shared.settings import Settings
from tests.support.scenario import check_scenario, submit_runs, wait_terminal
from workers.embedded import embedded_fleet


def test_embedded_fleet_runs_six_runs_of_three_phases_in_parallel_and_in_order(
    embedded_settings: Settings, sample_repo: Path
) -> None:
    with embedded_fleet(embedded_settings, 4) as celery, api_in_thread(embedded_settings, celery) as url:
        client = ApiClient(url, None)
        ids = submit_runs(client, sample_repo, 6)
        runs = wait_terminal(client, ids, timeout=180)
    check_scenario(sample_repo, runs)


def test_embedded_api_needs_no_key_by_default(embedded_settings: Settings) -> None:
    with embedded_fleet(embedded_settings, 1) as celery, api_in_thread(embedded_settings, celery) as url:
        assert ApiClient(url, None).runs()["items"] == []
