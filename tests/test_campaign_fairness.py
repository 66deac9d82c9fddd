"""A campaign shares the fleet: interactive runs jump its queue (Celery message priorities on Redis),
and cancelling it stops it. Real `autopack worker` processes on Postgres and Redis."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from api.client import ApiClient
from api.serve import free_port
from shared.settings import Settings
from tests.support.campaigns import wait_campaign
from tests.support.procs import api_process, worker_process
from tests.support.scenario import wait_terminal

pytestmark = pytest.mark.fleet
PHASE_SECONDS = 0.5


def sleep_spec(repo: Path, name: str, seconds: float = PHASE_SECONDS) -> dict[str, Any]:
    return {
        "repo": str(repo),
        "name": name,
        "phases": [
            {
                "name": "work",
                "scope": ["out.txt"],
                "command": f"sleep {seconds}; echo done > out.txt",
                "validation": ["test -f out.txt"],
            },
        ],
    }


def started(url: str, query: str, **params: Any) -> list[datetime]:
    with sa.create_engine(url, poolclass=sa.pool.NullPool).connect() as conn:
        return [row[0] for row in conn.execute(sa.text(query), params).all()]


def test_an_interactive_run_starts_ahead_of_a_queued_campaign(
    fleet_settings: Settings, sample_repo: Path, tmp_path: Path, api_key: str
) -> None:
    url = fleet_settings.database_url
    with (
        api_process(fleet_settings, free_port(), tmp_path) as api,
        worker_process(fleet_settings, "w1", tmp_path, concurrency=2),
    ):
        client = ApiClient(api, api_key)
        sources = [client.submit(sleep_spec(sample_repo, f"source-{i}"))["id"] for i in range(10)]
        wait_terminal(client, sources, timeout=60)
        created = client.create_campaign({"source": {"run_ids": sources}, "repeats": 6})
        assert created["dispatched"] == 60  # all on the broker at once: no max_parallel_runs
        while client.campaign(created["id"])["children_by_state"].get("RUNNING", 0) < 2:
            time.sleep(0.05)
        submitted = time.time()
        interactive = client.submit(sleep_spec(sample_repo, "interactive", 0.05))["id"]
        run = wait_terminal(client, [interactive], timeout=60)[0]
        client.cancel_campaign(created["id"])
        wait_campaign(client, created["id"], timeout=60)
    began = datetime.fromisoformat(run["phases"][0]["started_at"]).timestamp()
    children = started(
        url,
        "SELECT p.started_at FROM phases p JOIN runs r ON r.id = p.run_id "
        "WHERE r.campaign_id = :c AND p.started_at IS NOT NULL",
        c=created["id"],
    )
    jumped = [t for t in children if submitted < t.timestamp() < began]
    waited = began - submitted
    print(f"interactive run waited {waited:.2f} s behind 60 queued campaign phases of {PHASE_SECONDS} s")
    # Only the children that were already handed to a worker slot (2) may start in between: the
    # other ~58 queued messages wait behind the interactive one.
    assert run["state"] == "DONE_SUCCESS"
    assert len(jumped) <= 2
    assert len(children) < 60


def test_cancelling_a_campaign_ends_its_waiting_children_and_starts_no_more(
    fleet_settings: Settings, sample_repo: Path, tmp_path: Path, api_key: str
) -> None:
    url = fleet_settings.database_url
    with (
        api_process(fleet_settings, free_port(), tmp_path) as api,
        worker_process(fleet_settings, "w1", tmp_path, workspace=tmp_path / "host1"),
        worker_process(fleet_settings, "w2", tmp_path, workspace=tmp_path / "host2"),
    ):
        client = ApiClient(api, api_key)
        sources = [client.submit(sleep_spec(sample_repo, f"source-{i}", 0.05))["id"] for i in range(20)]
        wait_terminal(client, sources, timeout=120)
        created = client.create_campaign({"source": {"run_ids": sources}, "max_parallel_runs": 3})
        while client.campaign(created["id"])["ended"] < 3:
            time.sleep(0.05)
        cancelled_at = time.time()
        client.cancel_campaign(created["id"])
        view = wait_campaign(client, created["id"], timeout=60)
        time.sleep(1.5)  # a reconciler pass: nothing may start after a cancel
        after = client.campaign(created["id"])
    began = started(
        url,
        "SELECT p.started_at FROM phases p JOIN runs r ON r.id = p.run_id "
        "WHERE r.campaign_id = :c AND p.started_at IS NOT NULL",
        c=created["id"],
    )
    assert view["state"] == "CANCELLED" and after["children_by_state"] == view["children_by_state"]
    done = view["children_by_state"].get("DONE_SUCCESS", 0)
    assert 3 <= done <= 3 + 3 + 3  # ended before the cancel, plus at most the live ones finishing
    assert view["children_by_state"]["CANCELLED"] == 20 - done >= 8
    assert all(t.timestamp() <= cancelled_at + 0.5 for t in began)
