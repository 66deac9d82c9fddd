"""The dispatch outbox (shared/outbox.py) and the reconciler, on real Postgres and on SQLite."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import redis
from sqlalchemy import update

from api.sample_repo import sample_spec
from shared.db import session_factory, transaction
from shared.errors import LeaseLost
from shared.models import Phase, Run, utcnow
from shared.outbox import claim_and_enqueue, enqueue_claimed, reconcile
from shared.runs import cancel_run, create_run
from shared.specs import RunSpec
from shared.states import PhaseState, RunState
from workers import record
from workers.lease import acquire
from workers.record import PhaseJob


class RecordingDispatcher:
    """Remembers what it was asked to enqueue (thread-safe, for racing callers)."""

    def __init__(self, waiting: set[tuple[int, int]] | None = None) -> None:
        self.calls: list[tuple[int, int]] = []
        self._lock = threading.Lock()
        self._waiting = waiting
        self.asked = 0

    def enqueue(self, run_id: int, phase_id: int, *, background: bool = False) -> None:
        with self._lock:
            self.calls.append((run_id, phase_id))

    def waiting(self) -> set[tuple[int, int]] | None:
        self.asked += 1
        return self._waiting


class BrokenDispatcher:
    def __init__(self) -> None:
        self.attempts = 0

    def enqueue(self, run_id: int, phase_id: int, *, background: bool = False) -> None:
        self.attempts += 1
        raise ConnectionError("broker is down")

    def waiting(self) -> set[tuple[int, int]] | None:
        return None


def make_run(url: str, repo: Path, i: int = 0) -> tuple[int, list[int]]:
    with transaction(url) as session:
        run = create_run(session, RunSpec.model_validate(sample_spec(repo, i)))
        return run.id, run.phase_ids


def dispatched_at(url: str, phase_id: int) -> datetime | None:
    with transaction(url) as session:
        phase = session.get(Phase, phase_id)
        assert phase is not None
        return phase.dispatched_at


def set_dispatched_at(url: str, phase_id: int, when: datetime | None) -> None:
    with transaction(url) as session:
        session.execute(update(Phase).where(Phase.id == phase_id).values(dispatched_at=when))


def load_run(url: str, run_id: int) -> tuple[RunState, list[PhaseState], int, str | None]:
    with transaction(url) as session:
        run = session.get(Run, run_id)
        assert run is not None
        return (
            RunState(run.state),
            [PhaseState(p.state) for p in run.phases],
            run.lease_epoch,
            run.lease_owner,
        )


# --- claim_and_enqueue --------------------------------------------------------------------------


def test_claim_enqueues_a_pending_phase_and_marks_it_dispatched(db_url: str, sample_repo: Path) -> None:
    run_id, phase_ids = make_run(db_url, sample_repo)
    dispatcher = RecordingDispatcher()
    before = utcnow()

    assert claim_and_enqueue(db_url, dispatcher, run_id, phase_ids[0], stale_after=None)

    assert dispatcher.calls == [(run_id, phase_ids[0])]
    stamp = dispatched_at(db_url, phase_ids[0])
    assert stamp is not None and stamp >= before - timedelta(seconds=1)


def test_claim_does_not_enqueue_an_already_dispatched_phase_until_it_is_stale(
    db_url: str, sample_repo: Path
) -> None:
    run_id, phase_ids = make_run(db_url, sample_repo)
    dispatcher = RecordingDispatcher()
    assert claim_and_enqueue(db_url, dispatcher, run_id, phase_ids[0], stale_after=None)

    assert not claim_and_enqueue(db_url, dispatcher, run_id, phase_ids[0], stale_after=None)
    assert not claim_and_enqueue(db_url, dispatcher, run_id, phase_ids[0], stale_after=60)
    set_dispatched_at(db_url, phase_ids[0], utcnow() - timedelta(seconds=120))
    assert claim_and_enqueue(db_url, dispatcher, run_id, phase_ids[0], stale_after=60)

    assert dispatcher.calls == [(run_id, phase_ids[0])] * 2


def test_racing_claims_enqueue_the_phase_exactly_once(db_url: str, sample_repo: Path) -> None:
    run_id, phase_ids = make_run(db_url, sample_repo)
    dispatcher = RecordingDispatcher()
    n = 6
    start = threading.Barrier(n, timeout=30)
    won: list[bool] = []
    errors: list[BaseException] = []

    def claim() -> None:
        try:
            start.wait()
            won.append(claim_and_enqueue(db_url, dispatcher, run_id, phase_ids[0], stale_after=None))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=claim) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)

    assert errors == []
    assert sorted(won) == [False] * (n - 1) + [True]
    assert dispatcher.calls == [(run_id, phase_ids[0])]


def test_a_dispatcher_that_raises_leaves_the_phase_pending(db_url: str, sample_repo: Path) -> None:
    run_id, phase_ids = make_run(db_url, sample_repo)
    broken = BrokenDispatcher()

    assert not claim_and_enqueue(db_url, broken, run_id, phase_ids[0], stale_after=None)

    assert broken.attempts == 1
    assert dispatched_at(db_url, phase_ids[0]) is None
    # once the broker is back, the next claim gets it there
    dispatcher = RecordingDispatcher()
    assert claim_and_enqueue(db_url, dispatcher, run_id, phase_ids[0], stale_after=None)
    assert dispatcher.calls == [(run_id, phase_ids[0])]


def test_a_run_created_with_its_first_phase_claimed_is_neither_reclaimed_nor_lost(
    db_url: str, sample_repo: Path
) -> None:
    """POST /runs wins the first phase's entry in the run's own transaction: no second claim wins it,
    a broker refusal puts it back to pending, and the reconciler then dispatches it."""
    with transaction(db_url) as session:
        run = create_run(session, RunSpec.model_validate(sample_spec(sample_repo, 0)), claim_first=True)
        run_id, phase_ids = run.id, run.phase_ids
    assert dispatched_at(db_url, phase_ids[0]) is not None
    assert [dispatched_at(db_url, p) for p in phase_ids[1:]] == [None] * (len(phase_ids) - 1)
    other = RecordingDispatcher()
    assert not claim_and_enqueue(db_url, other, run_id, phase_ids[0], stale_after=None)
    assert reconcile(db_url, other, redispatch_after=60) == 0 and other.calls == []

    broken = BrokenDispatcher()
    assert not enqueue_claimed(db_url, broken, run_id, phase_ids[0], background=False)
    assert broken.attempts == 1 and dispatched_at(db_url, phase_ids[0]) is None
    assert reconcile(db_url, other, redispatch_after=60) == 1
    assert other.calls == [(run_id, phase_ids[0])]


# --- reconcile ----------------------------------------------------------------------------------


def test_reconcile_dispatches_the_first_phase_of_a_queued_run(db_url: str, sample_repo: Path) -> None:
    run_id, phase_ids = make_run(db_url, sample_repo)
    dispatcher = RecordingDispatcher()

    assert reconcile(db_url, dispatcher, redispatch_after=60) == 1

    assert dispatcher.calls == [(run_id, phase_ids[0])]
    assert dispatched_at(db_url, phase_ids[0]) is not None
    # a second pass inside redispatch_after leaves it alone
    assert reconcile(db_url, dispatcher, redispatch_after=60) == 0
    assert dispatcher.calls == [(run_id, phase_ids[0])]


def test_reconcile_skips_a_run_whose_lease_is_live(db_url: str, sample_repo: Path) -> None:
    leased_id, _ = make_run(db_url, sample_repo, 0)
    free_id, free_phases = make_run(db_url, sample_repo, 1)
    assert acquire(db_url, leased_id, "worker-a", ttl=30) is not None
    dispatcher = RecordingDispatcher()

    assert reconcile(db_url, dispatcher, redispatch_after=0) == 1

    assert dispatcher.calls == [(free_id, free_phases[0])]


def test_reconcile_redispatches_an_executing_phase_whose_lease_expired(
    db_url: str, sample_repo: Path
) -> None:
    run_id, phase_ids = make_run(db_url, sample_repo)
    lease = acquire(db_url, run_id, "worker-a", ttl=0.1)
    assert lease is not None
    assert isinstance(record.start(lease, phase_ids[0], max_deliveries=3), PhaseJob)
    set_dispatched_at(db_url, phase_ids[0], utcnow() - timedelta(seconds=30))
    time.sleep(0.2)  # the worker died: nothing renews its lease
    dispatcher = RecordingDispatcher()

    assert reconcile(db_url, dispatcher, redispatch_after=10) == 1

    assert dispatcher.calls == [(run_id, phase_ids[0])]
    assert load_run(db_url, run_id)[1][0] == PhaseState.EXECUTING


def test_reconcile_waits_redispatch_after_before_redispatching_an_expired_phase(
    db_url: str, sample_repo: Path
) -> None:
    run_id, phase_ids = make_run(db_url, sample_repo)
    lease = acquire(db_url, run_id, "worker-a", ttl=0.1)
    assert lease is not None
    assert isinstance(record.start(lease, phase_ids[0], max_deliveries=3), PhaseJob)
    set_dispatched_at(db_url, phase_ids[0], utcnow())
    time.sleep(0.2)
    dispatcher = RecordingDispatcher()

    assert reconcile(db_url, dispatcher, redispatch_after=60) == 0

    assert dispatcher.calls == []


def test_reconcile_finishes_a_cancel_requested_run_without_a_live_lease_as_cancelled(
    db_url: str, sample_repo: Path
) -> None:
    run_id, phase_ids = make_run(db_url, sample_repo)
    lease = acquire(db_url, run_id, "worker-a", ttl=0.5)
    assert lease is not None
    assert isinstance(record.start(lease, phase_ids[0], max_deliveries=3), PhaseJob)
    with session_factory(db_url)() as session:  # as the API calls it: cancel_run commits itself
        cancel_run(session, run_id)  # the lease is live: only flags the run
    state, _, epoch_before, _ = load_run(db_url, run_id)
    assert state == RunState.RUNNING
    time.sleep(0.6)  # the worker died: nothing renews its lease
    dispatcher = RecordingDispatcher()

    assert reconcile(db_url, dispatcher, redispatch_after=0) == 0

    state, phases, epoch, owner = load_run(db_url, run_id)
    assert state == RunState.CANCELLED
    assert phases == [PhaseState.CANCELLED] * 3
    assert epoch == epoch_before + 1
    assert owner is None
    assert dispatcher.calls == []
    with pytest.raises(LeaseLost), transaction(db_url) as session:
        lease.fence(session)


def test_reconcile_leaves_terminal_runs_alone(db_url: str, sample_repo: Path) -> None:
    run_id, _ = make_run(db_url, sample_repo)
    with session_factory(db_url)() as session:
        cancel_run(session, run_id)  # no lease: cancelled at once
    dispatcher = RecordingDispatcher()

    assert reconcile(db_url, dispatcher, redispatch_after=0) == 0

    assert dispatcher.calls == []
    assert load_run(db_url, run_id)[0] == RunState.CANCELLED


def test_reconcile_leaves_a_stale_phase_alone_while_its_message_still_waits_in_the_queue(
    db_url: str, sample_repo: Path
) -> None:
    run_id, phase_ids = make_run(db_url, sample_repo)
    set_dispatched_at(db_url, phase_ids[0], utcnow() - timedelta(seconds=600))  # a long backlog
    backlog = RecordingDispatcher(waiting={(run_id, phase_ids[0])})

    assert reconcile(db_url, backlog, redispatch_after=60) == 0
    assert backlog.calls == []

    lost = RecordingDispatcher(waiting=set())  # the broker lost it: dispatch again
    assert reconcile(db_url, lost, redispatch_after=60) == 1
    assert lost.calls == [(run_id, phase_ids[0])]


def test_reconcile_does_not_even_read_the_queue_when_every_run_was_dispatched_recently(
    db_url: str, sample_repo: Path
) -> None:
    for i in range(3):
        _, phase_ids = make_run(db_url, sample_repo, i)
        set_dispatched_at(db_url, phase_ids[0], utcnow())
    dispatcher = RecordingDispatcher(waiting=set())

    assert reconcile(db_url, dispatcher, redispatch_after=60) == 0

    assert dispatcher.asked == 0 and dispatcher.calls == []


def test_reconcile_finishes_a_run_whose_worker_died_after_recording_its_last_phase(
    db_url: str, sample_repo: Path
) -> None:
    run_id, _ = make_run(db_url, sample_repo)
    with transaction(db_url) as session:
        session.execute(update(Run).where(Run.id == run_id).values(state=RunState.RUNNING))
        session.execute(update(Phase).where(Phase.run_id == run_id).values(state=PhaseState.COMPLETE))
    dispatcher = RecordingDispatcher(waiting=set())

    assert reconcile(db_url, dispatcher, redispatch_after=60) == 0

    assert load_run(db_url, run_id)[0] == RunState.DONE_SUCCESS
    assert dispatcher.calls == []


def test_the_celery_dispatcher_sees_the_phase_messages_waiting_in_redis(redis_url: str) -> None:
    from shared.settings import Settings
    from workers.celery_app import CeleryDispatcher, create_app

    app = create_app(Settings(broker_url=redis_url, _env_file=None))  # type: ignore[call-arg]
    dispatcher = CeleryDispatcher(app)
    dispatcher.enqueue(7, 70)
    dispatcher.enqueue(8, 80)
    app.send_task("some.other.task", args=[9, 90], queue="autopack")

    assert dispatcher.waiting() == {(7, 70), (8, 80)}
    redis.Redis.from_url(redis_url).rpop("autopack")  # a worker took the oldest (kombu BRPOPs)
    assert dispatcher.waiting() == {(8, 80)}


def test_reconcile_does_not_mark_a_run_done_success_while_its_branch_move_has_failed(
    db_url: str, sample_repo: Path
) -> None:
    run_id, _ = make_run(db_url, sample_repo)
    moved = "f" * 40  # the recorded head the result branch never reached (branch_sha stays NULL)
    with transaction(db_url) as session:
        session.execute(update(Run).where(Run.id == run_id).values(state=RunState.RUNNING, head_sha=moved))
        session.execute(update(Phase).where(Phase.run_id == run_id).values(state=PhaseState.COMPLETE))
    dispatcher = RecordingDispatcher(waiting=set())

    reconcile(db_url, dispatcher, redispatch_after=60)
    assert load_run(db_url, run_id)[0] == RunState.RUNNING

    with transaction(db_url) as session:  # what move_branch writes once the branch is there
        session.execute(update(Run).where(Run.id == run_id).values(branch_sha=moved))
    reconcile(db_url, dispatcher, redispatch_after=60)
    assert load_run(db_url, run_id)[0] == RunState.DONE_SUCCESS
    assert dispatcher.calls == []


def test_reconcile_ends_a_run_with_a_skipped_phase_done_failed_naming_it(
    db_url: str, sample_repo: Path
) -> None:
    run_id, phase_ids = make_run(db_url, sample_repo)
    with transaction(db_url) as session:
        session.execute(update(Run).where(Run.id == run_id).values(state=RunState.RUNNING))
        session.execute(update(Phase).where(Phase.run_id == run_id).values(state=PhaseState.COMPLETE))
        session.execute(
            update(Phase)
            .where(Phase.id == phase_ids[1])
            .values(
                state=PhaseState.SKIPPED, failure_reason="skipped on the Doctor's advice: no tests needed"
            )
        )

    reconcile(db_url, RecordingDispatcher(waiting=set()), redispatch_after=60)

    with transaction(db_url) as session:
        run = session.get(Run, run_id)
        assert run is not None
        assert run.state == RunState.DONE_FAILED
        assert run.failure_reason == (
            "phase 1 (test-greeting) was skipped: skipped on the Doctor's advice: no tests needed"
        )


def test_a_worker_whose_branch_move_failed_leaves_its_finished_run_running_for_the_reconciler(
    db_url: str, sample_repo: Path
) -> None:
    run_id, phase_ids = make_run(db_url, sample_repo)
    with transaction(db_url) as session:
        session.execute(update(Phase).where(Phase.id != phase_ids[-1]).values(state=PhaseState.COMPLETE))
    lease = acquire(db_url, run_id, "worker-a", ttl=30)
    assert lease is not None
    job = record.start(lease, phase_ids[-1], max_deliveries=3)
    assert isinstance(job, PhaseJob)
    moved = "e" * 40
    with transaction(db_url) as session:  # the last phase recorded; its branch move then failed
        session.execute(update(Phase).where(Phase.id == phase_ids[-1]).values(state=PhaseState.COMPLETE))
        session.execute(update(Run).where(Run.id == run_id).values(head_sha=moved))

    record.wrap_up(lease, job, None)  # no branch to note: the move failed
    assert load_run(db_url, run_id)[0] == RunState.RUNNING
    assert load_run(db_url, run_id)[3] is None  # the lease is released all the same

    with transaction(db_url) as session:  # the reconciler's branch move, noted
        session.execute(update(Run).where(Run.id == run_id).values(branch_sha=moved))
    reconcile(db_url, RecordingDispatcher(), redispatch_after=60)
    assert load_run(db_url, run_id)[0] == RunState.DONE_SUCCESS
