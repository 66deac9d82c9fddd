"""Fleet-wide duties: among any number of workers, one claims each period's pass, and the reconciler's
database side runs only in the pass its worker claimed (observed in the duty row and in the log of the
work the pass attempts)."""

from __future__ import annotations

import logging
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from shared.db import transaction
from shared.duties import claim
from shared.models import FleetDuty, Run, utcnow
from shared.settings import Settings
from shared.states import RunState
from tests.test_retention import new_run
from workers.celery_app import CeleryDispatcher, create_app
from workers.runtime import RECONCILE_DUTY, Reconciler

WORKERS = 8


def duty_row(db_url: str, name: str) -> tuple[int, str | None]:
    with transaction(db_url) as session:
        row = session.execute(select(FleetDuty.passes, FleetDuty.holder).where(FleetDuty.name == name)).one()
        return row.passes, row.holder


def claim_all(db_url: str, name: str) -> list[bool]:
    with ThreadPoolExecutor(WORKERS) as pool:
        return list(pool.map(lambda i: claim(db_url, name, 60, f"host/{i}"), range(WORKERS)))


def test_one_of_many_concurrent_claimers_wins_each_period(db_url: str) -> None:
    first = claim_all(db_url, "tidy")
    assert first.count(True) == 1
    assert duty_row(db_url, "tidy") == (1, f"host/{first.index(True)}")
    assert claim_all(db_url, "tidy").count(True) == 0  # the period has not elapsed

    with transaction(db_url) as session:  # it has now
        session.execute(update(FleetDuty).values(due_at=utcnow() - timedelta(seconds=1)))
    again = claim_all(db_url, "tidy")
    assert again.count(True) == 1
    assert duty_row(db_url, "tidy") == (2, f"host/{again.index(True)}")


def lagging_run(db_url: str, sample_repo: Path, tmp_path: Path) -> int:
    """An ended run whose branch never reached its head, in a repository that is gone since: every
    fleet pass tries to move that branch, fails, and says so."""
    gone = tmp_path / "gone"
    shutil.copytree(sample_repo, gone)
    run_id = new_run(db_url, gone, RunState.DONE_SUCCESS, ended_days_ago=1)
    shutil.rmtree(gone)
    with transaction(db_url) as session:
        session.execute(update(Run).where(Run.id == run_id).values(head_sha="a" * 40, branch_sha=None))
    return run_id


def test_two_workers_reconcilers_do_the_fleet_pass_once_per_period(
    pg: str, redis_url: str, sample_repo: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    period = 0.2
    s = Settings(
        database_url=pg,
        broker_url=redis_url,
        workspace_dir=tmp_path / "workspace",
        reconcile_interval_seconds=period,
        log_level="WARNING",
        _env_file=None,  # type: ignore[call-arg]
    )
    run_id = lagging_run(pg, sample_repo, tmp_path)
    caplog.set_level(logging.WARNING, logger="workers.runtime")
    dispatcher = CeleryDispatcher(create_app(s))
    reconcilers = [Reconciler(s, dispatcher) for _ in range(2)]
    started = time.monotonic()
    for r in reconcilers:
        r.start()
    time.sleep(10 * period)
    for r in reconcilers:
        r.stop()
    elapsed = time.monotonic() - started

    claimed, _ = duty_row(pg, RECONCILE_DUTY)
    tried = [
        r for r in caplog.records if r.getMessage().startswith(f"run {run_id}: result branch still behind")
    ]
    assert 4 <= claimed <= elapsed / period + 1  # two loops unclaimed would have made ~2x elapsed/period
    assert len(tried) == claimed  # the losing wake-ups did none of the database side
