"""Getting QUEUED phases onto the broker exactly when they need it.

`phases.dispatched_at` is the outbox: NULL means "the broker does not have this yet". A claim is an
UPDATE that only one caller can win, so two reconcilers never both enqueue the same phase; a phase
whose message was lost (broker restart, worker killed with the message unacked) is claimed again once
`redispatch_after_seconds` have passed with no live lease on its run.

`claim` wins an entry inside the caller's transaction. Where the caller alone may dispatch the phase,
it stamps `dispatched_at` itself in the transaction that makes the phase due: a worker finishing a
phase, as it releases the lease (workers/record/outcome.py `succeed`), and `POST /runs` for a new run's first
phase. Either way the message is sent (`enqueue_claimed`) only after that commit, and a broker refusal
puts the entry back to pending.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import NamedTuple

from sqlalchemy import ColumnElement, and_, func, or_, select, update
from sqlalchemy.orm import Session, aliased

from shared.budget import charge_orphaned
from shared.db import transaction
from shared.dispatch import Dispatcher
from shared.models import Attempt, Phase, Run, utcnow
from shared.runs import finish_cancelled, finish_if_done
from shared.states import PHASE_TERMINAL, RUN_TERMINAL, AttemptOutcome, PhaseState, RunState

log = logging.getLogger(__name__)


def claim_and_enqueue(
    db_url: str, dispatcher: Dispatcher, run_id: int, phase_id: int, stale_after: float | None
) -> bool:
    """Enqueue the phase if its outbox entry is pending (or stale); True when this call enqueued it."""
    with transaction(db_url) as session:
        won = claim(session, phase_id, stale_after)
        background = won and session.scalar(select(Run.campaign_id).where(Run.id == run_id)) is not None
    return won and enqueue_claimed(db_url, dispatcher, run_id, phase_id, background=background)


def claim(session: Session, phase_id: int, stale_after: float | None = None) -> bool:
    """Inside the caller's transaction: win the phase's pending (or stale) outbox entry. Only one
    caller can win it; the winner enqueues after the transaction commits (`enqueue_claimed`)."""
    now = utcnow()
    pending: ColumnElement[bool] = Phase.dispatched_at.is_(None)
    if stale_after is not None:
        pending = or_(pending, Phase.dispatched_at < now - timedelta(seconds=stale_after))
    won = session.execute(update(Phase).where(Phase.id == phase_id, pending).values(dispatched_at=now))
    return bool(won.rowcount)  # type: ignore[attr-defined]


def enqueue_claimed(
    db_url: str, dispatcher: Dispatcher, run_id: int, phase_id: int, *, background: bool
) -> bool:
    """Send a claimed phase to the broker; if it cannot take it, the entry goes back to pending."""
    try:
        dispatcher.enqueue(run_id, phase_id, background=background)
    except Exception as exc:
        log.warning("broker unavailable, phase %s stays pending: %s", phase_id, exc)
        with transaction(db_url) as session:
            session.execute(update(Phase).where(Phase.id == phase_id).values(dispatched_at=None))
        return False
    return True


def claim_many(db_url: str, dispatcher: Dispatcher, phases: Sequence[tuple[int, int]]) -> int:
    """Enqueue many pending (run, phase) at once, as campaign children (`background`): one claiming
    UPDATE, then one message each; returns how many were enqueued. A broker failure leaves the rest
    pending for the reconciler, like `claim_and_enqueue`."""
    if not phases:
        return 0
    ids = [phase_id for _, phase_id in phases]
    with transaction(db_url) as session:
        won = set(
            session.scalars(
                update(Phase)
                .where(Phase.id.in_(ids), Phase.dispatched_at.is_(None))
                .values(dispatched_at=utcnow())
                .returning(Phase.id)
                .execution_options(synchronize_session=False)
            )
        )
    sent: list[int] = []
    try:
        for run_id, phase_id in phases:
            if phase_id in won:
                dispatcher.enqueue(run_id, phase_id, background=True)
                sent.append(phase_id)
    except Exception as exc:
        log.warning("broker unavailable, %d phases stay pending: %s", len(won) - len(sent), exc)
        with transaction(db_url) as session:
            unsent = [i for i in won if i not in set(sent)]
            session.execute(update(Phase).where(Phase.id.in_(unsent)).values(dispatched_at=None))
    return len(sent)


def reconcile(db_url: str, dispatcher: Dispatcher, redispatch_after: float) -> int:
    """One pass: re-dispatch every run's next phase that has no live task; finish cancelled runs.

    Returns how many phases were enqueued. Cheap when nothing is wrong: one query finds the runs that
    need action, and a phase whose message still waits in the queue (a backlog, not a loss) is left
    alone without a transaction, so a long queue is neither flooded with duplicates nor rescanned.
    Budget reservations a dead holder left behind are charged first (one UPDATE).
    """
    with transaction(db_url) as session:
        charged = charge_orphaned(session)
    if charged:
        log.warning(
            "charged the reserved worst case of calls left in flight by dead holders: runs %s", charged
        )
    candidates = _runs_needing_action(db_url, redispatch_after)
    waiting = dispatcher.waiting() if candidates else None
    enqueued = 0
    for run_id, next_phase in candidates:
        if waiting is not None and (run_id, next_phase) in waiting:
            continue
        phase_id = _next_phase_or_finish(db_url, run_id)
        if phase_id is not None:
            enqueued += claim_and_enqueue(db_url, dispatcher, run_id, phase_id, stale_after=redispatch_after)
    return enqueued


def _runs_needing_action(db_url: str, redispatch_after: float) -> list[tuple[int, int | None]]:
    """(run, next phase) of unleased live runs that are cancelled, finished but not marked (no next
    phase), or whose next phase's dispatch is pending or older than `redispatch_after` (a phase
    awaiting approval is skipped, like a held campaign child)."""
    now = utcnow()
    terminal = [s.value for s in PHASE_TERMINAL]
    next_index = (
        select(func.min(Phase.index))
        .where(Phase.run_id == Run.id, Phase.state.not_in(terminal))
        .correlate(Run)
        .scalar_subquery()
    )
    nxt = aliased(Phase)
    cutoff = now - timedelta(seconds=redispatch_after)
    query = (
        select(Run.id, nxt.id)
        .outerjoin(nxt, and_(nxt.run_id == Run.id, nxt.index == next_index))
        .where(
            Run.state.in_([RunState.QUEUED, RunState.RUNNING]),
            Run.held.is_(False),
            or_(Run.lease_owner.is_(None), Run.lease_expires_at < now),
            or_(
                Run.cancel_requested.is_(True),
                nxt.id.is_(None),
                and_(
                    # Paused for a person: nothing is owed until a decision re-queues it.
                    nxt.state != PhaseState.AWAITING_APPROVAL,
                    or_(nxt.dispatched_at.is_(None), nxt.dispatched_at < cutoff),
                ),
            ),
        )
    )
    with transaction(db_url) as session:
        return [(run_id, phase_id) for run_id, phase_id in session.execute(query).all()]


def _next_phase_or_finish(db_url: str, run_id: int) -> int | None:
    now = utcnow()
    with transaction(db_url) as session:
        run = session.scalars(select(Run).where(Run.id == run_id).with_for_update()).first()
        if run is None or RunState(run.state).terminal:
            return None
        if run.lease_owner is not None and run.lease_expires_at is not None and run.lease_expires_at > now:
            return None  # taken since we listed it
        if run.cancel_requested:
            finish_cancelled(session, run)
            run.lease_epoch += 1
            return None
        pending = [p for p in run.phases if PhaseState(p.state) not in PHASE_TERMINAL]
        if not pending:  # its worker died between recording the last phase and finishing the run
            if finish_if_done(run):  # not while its branch is behind: a later pass, after the move
                run.lease_epoch += 1
            return None
        return pending[0].id


def _nothing_left() -> ColumnElement[bool]:
    pending = select(Phase.id).where(Phase.run_id == Run.id, Phase.state.not_in(list(PHASE_TERMINAL)))
    return or_(Run.state.in_(list(RUN_TERMINAL)), ~pending.exists())


class Lagging(NamedTuple):
    """A run whose result branch is behind its recorded head."""

    run_id: int
    repo: str
    head: str
    phase_index: int | None
    """The phase that recorded `head`, and the lease epoch it pushed its phase ref under: that ref is
    what moving the branch makes redundant (None: a campaign reused the phase; no ref of its own)."""
    epoch: int | None


def lagging_branches(db_url: str) -> list[Lagging]:
    """Runs whose result branch is behind the recorded head: free runs that ended or have no phase
    left (their last move failed, or a cancel ended them between two phases), and runs whose holder
    died. A running run's branch trails its head by one phase on purpose (the next phase's push moves
    it: workers/publish.py), so a run between phases is left to that push."""
    now = utcnow()
    recorded = (
        select(Phase.index, Attempt.lease_epoch)
        .join(Attempt, Attempt.phase_id == Phase.id)
        .where(
            Phase.run_id == Run.id,
            Phase.commit_sha == Run.head_sha,
            Attempt.outcome == AttemptOutcome.SUCCESS,
        )
        .order_by(Phase.index.desc(), Attempt.number.desc())
        .limit(1)
    )
    index = recorded.with_only_columns(Phase.index).scalar_subquery()
    epoch = recorded.with_only_columns(Attempt.lease_epoch).scalar_subquery()
    with transaction(db_url) as session:
        rows = session.execute(
            select(Run.id, Run.repo, Run.head_sha, index, epoch).where(
                Run.head_sha != Run.base_sha,
                or_(Run.branch_sha.is_(None), Run.branch_sha != Run.head_sha),
                or_(and_(Run.lease_owner.is_(None), _nothing_left()), Run.lease_expires_at < now),
            )
        ).all()
    return [Lagging(*row) for row in rows]
