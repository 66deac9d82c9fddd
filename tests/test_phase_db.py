"""The database work of a phase: how many transactions and round trips it costs, that a pooled
connection is not pinged when it was used a moment ago, that a dead one is still replaced before a
phase uses it, and that the cancel flag comes with the fenced writes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import update

from shared.db import IDLE_PING_SECONDS, engine_for, transaction
from shared.models import Run, utcnow
from shared.settings import Settings
from shared.states import AttemptOutcome
from tests.bench.phase_db import DbCounter, count_phases, new_run
from tests.conftest import PG_ADMIN
from workers import record
from workers.lease import acquire
from workers.record import AttemptRecord, PhaseJob

MIDDLE_PHASE_TRANSACTIONS = 2
"""Lease + start; the success with the next phase's claim and the lease release (workers/record/)."""
LAST_PHASE_TRANSACTIONS = 3
"""Lease + start; the success; after the branch move, the branch note + the finish + the release."""
VALIDATION_STORE_TRANSACTIONS = 3
"""With the validation store on, for a phase that changes a file into a tree never validated: the
baseline's lookup, the change's lookup (a tree another run built is not validated again), and recording
the phase's validation for the next phase (shared/validation_cache.py); all outside the lease's fenced
writes. A phase that changes nothing reads its validation from its baseline: the first lookup only."""
NEW_TREE = "date +%s%N > src/stamp.py"
"""A change whose tree no earlier run built: its validation runs and is recorded."""
PHASE_ROUND_TRIPS = 26
"""Postgres round trips of one no-op phase, with a margin over the 19-22 measured (23-27 before the
run and its phases were read in one SELECT and the efficiency row summed in its INSERT; 49-51 once)."""


@pytest.fixture
def pg_settings(pg: str, tmp_path: Path) -> Settings:
    return Settings(
        database_url=pg,
        broker_url="redis://127.0.0.1:6379/0",  # never used: the phases' dispatcher is recorded
        workspace_dir=tmp_path / "workspace",
        log_level="WARNING",
        _env_file=None,  # type: ignore[call-arg]
    )


def test_a_no_op_phase_costs_two_transactions_three_if_last_and_no_pings(
    pg_settings: Settings, sample_repo: Path
) -> None:
    counts = count_phases(pg_settings.model_copy(update={"validation_cache": False}), sample_repo, runs=2)
    for phase, expected in (
        (counts.middle, MIDDLE_PHASE_TRANSACTIONS),
        (counts.last, LAST_PHASE_TRANSACTIONS),
    ):
        assert phase.transactions == expected, phase
        assert phase.commits == expected, phase
        assert phase.pings == 0, phase
        assert phase.round_trips <= PHASE_ROUND_TRIPS, phase


@pytest.mark.parametrize(("command", "store"), [(NEW_TREE, VALIDATION_STORE_TRANSACTIONS), ("true", 1)])
def test_the_validation_store_adds_its_lookups_and_its_record_and_nothing_else(
    pg_settings: Settings, sample_repo: Path, command: str, store: int
) -> None:
    counts = count_phases(pg_settings, sample_repo, runs=2, command=command)
    for phase, expected in (
        (counts.middle, MIDDLE_PHASE_TRANSACTIONS),
        (counts.last, LAST_PHASE_TRANSACTIONS),
    ):
        assert phase.transactions == expected + store, phase
        assert phase.pings == 0, phase


def test_a_busy_delivery_is_one_transaction_and_a_stale_one_releases_in_it(
    pg_settings: Settings, sample_repo: Path
) -> None:
    db = pg_settings.database_url
    run_id, (first, _) = new_run(db, sample_repo, 2)
    holder = acquire(db, run_id, "someone-else", ttl=30)
    assert holder is not None
    with DbCounter(engine_for(db)) as counter:
        lease, why = record.begin(db, run_id, first, "me", 30, max_deliveries=3)
    assert lease is None and why == "busy: another worker holds this run"
    assert counter.counts.transactions == 1
    holder.release()

    with transaction(db) as session:  # the run was cancelled while its message waited
        session.execute(update(Run).where(Run.id == run_id).values(cancel_requested=True))
    with DbCounter(engine_for(db)) as counter:
        lease, why = record.begin(db, run_id, first, "me", 30, max_deliveries=3)
    assert lease is not None and lease.released and why == "cancelled"
    assert counter.counts.transactions == 1
    with transaction(db) as session:
        assert session.scalar(sa.select(Run.lease_owner).where(Run.id == run_id)) is None


def test_every_fenced_write_brings_the_cancel_flag_without_a_query(
    pg_settings: Settings, sample_repo: Path
) -> None:
    db = pg_settings.database_url
    run_id, (first, _) = new_run(db, sample_repo, 2)
    lease, job = record.begin(db, run_id, first, "me", 30, max_deliveries=3)
    assert lease is not None and isinstance(job, PhaseJob)
    assert not lease.cancel_seen
    with transaction(db) as session:
        session.execute(update(Run).where(Run.id == run_id).values(cancel_requested=True))
    now = utcnow()
    rec = AttemptRecord(1, AttemptOutcome.BUILD_FAILED, now, now, "no", None, None, [], None, None)
    record.attempt(lease, job, rec)
    assert lease.cancel_seen
    assert record.cancel_requested(db, run_id)
    lease.release()


def test_a_connection_used_a_moment_ago_is_not_pinged_but_an_idle_one_is(pg: str) -> None:
    engine = engine_for(pg)
    engine.dispose()  # no connection left idle by earlier tests
    with transaction(pg) as session:
        session.execute(sa.text("SELECT 1"))
    with DbCounter(engine) as counter:
        with transaction(pg) as session:
            session.execute(sa.text("SELECT 1"))
        assert counter.counts.pings == 0
        _age_pool(engine, IDLE_PING_SECONDS + 1)
        with transaction(pg) as session:
            session.execute(sa.text("SELECT 1"))
        assert counter.counts.pings == 1


def test_a_connection_whose_backend_died_is_replaced_before_use(pg: str) -> None:
    # What a Postgres restart does to every pooled connection, a moment after it was last used:
    # no idle-time ping would catch it, the closed socket does.
    engine_for(pg).dispose()  # one pooled connection: the next checkout is the one that dies
    with transaction(pg) as session:
        pid = session.scalar(sa.text("SELECT pg_backend_pid()"))
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        assert conn.scalar(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        # Terminating is asynchronous: once the backend is gone, its socket has been closed.
        gone = sa.text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid")
        for _ in range(500):
            if not conn.scalar(gone, {"pid": pid}):
                break
            time.sleep(0.01)
    with DbCounter(engine_for(pg)) as counter, transaction(pg) as session:
        assert session.scalar(sa.text("SELECT pg_backend_pid()")) != pid
    assert counter.counts.pings == 1


def _age_pool(engine: sa.Engine, seconds: float) -> None:
    """Make every pooled connection look idle for `seconds` longer than it is."""
    for record_ in list(engine.pool._pool.queue):  # type: ignore[attr-defined]
        record_.info["used_at"] -= seconds
