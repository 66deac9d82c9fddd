"""A campaign's life after creation: children released under `max_parallel_runs`, cancel, and the end.

`release` is called after each child's phase (by the worker that ran it) and by every reconciler
pass; both may race, so it locks the campaign row first and counts what is live under that lock. A
released child is an ordinary QUEUED run with a pending outbox row, enqueued by the caller after
commit. Safe to run twice: a second call finds no room or nothing held.
"""

from __future__ import annotations

import logging

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, selectinload

from shared.campaigns.judge import judge_pending
from shared.db import transaction
from shared.dispatch import Dispatcher
from shared.errors import NotFound
from shared.keys import Caller
from shared.models import Campaign, Phase, Run, utcnow
from shared.outbox import claim_many
from shared.runs import finish_cancelled
from shared.states import RUN_TERMINAL, CampaignState, PhaseState, RunState

log = logging.getLogger(__name__)
LIVE = [RunState.QUEUED, RunState.RUNNING]


def release(session: Session, campaign_id: int) -> list[tuple[int, int]]:
    """Un-hold as many children as `max_parallel_runs` has room for; returns their (run, first phase)
    to enqueue after commit. A campaign whose cap was reached cancels its held children instead."""
    campaign = _locked(session, campaign_id)
    if campaign is None or campaign.state != CampaignState.ACTIVE:
        return []
    if campaign.cap_reached is not None:
        _cancel_held(session, campaign, f"campaign cap reached: {campaign.cap_reached}")
        return []
    room = _room(session, campaign)
    if room <= 0:
        return []
    ids = list(
        session.scalars(
            select(Run.id)
            .where(Run.campaign_id == campaign_id, Run.held.is_(True))
            .order_by(Run.id)
            .limit(room)
        )
    )
    if not ids:
        return []
    session.execute(
        update(Run).where(Run.id.in_(ids)).values(held=False).execution_options(synchronize_session=False)
    )
    return _first_phases(session, ids)


def _locked(session: Session, campaign_id: int) -> Campaign | None:
    return session.scalars(select(Campaign).where(Campaign.id == campaign_id).with_for_update()).first()


def _room(session: Session, campaign: Campaign) -> int:
    if campaign.max_parallel_runs is None:
        return 1_000_000
    live = session.scalar(
        select(func.count(Run.id)).where(
            Run.campaign_id == campaign.id, Run.held.is_(False), Run.state.in_(LIVE)
        )
    )
    return campaign.max_parallel_runs - int(live or 0)


def _first_phases(session: Session, run_ids: list[int]) -> list[tuple[int, int]]:
    rows = session.execute(
        select(Phase.run_id, func.min(Phase.id))
        .where(Phase.run_id.in_(run_ids), Phase.state == PhaseState.QUEUED)
        .group_by(Phase.run_id)
    ).all()
    return sorted((int(run_id), int(phase_id)) for run_id, phase_id in rows)


def _cancel_held(session: Session, campaign: Campaign, reason: str) -> int:
    held = list(
        session.scalars(
            select(Run)
            .where(Run.campaign_id == campaign.id, Run.held.is_(True), Run.state == RunState.QUEUED)
            .options(selectinload(Run.phases))
        )
    )
    for run in held:
        finish_cancelled(session, run)
        run.failure_reason = reason[:4000]
        run.lease_epoch += 1
    return len(held)


def advance(db_url: str, dispatcher: Dispatcher, campaign_id: int) -> int:
    """Release what has room and enqueue it; mark the campaign DONE once every child has ended.
    Returns how many children were enqueued."""
    with transaction(db_url) as session:
        released = release(session, campaign_id)
        _finish_if_done(session, campaign_id)
    return claim_many(db_url, dispatcher, released)


def _finish_if_done(session: Session, campaign_id: int) -> None:
    """Once no child is live, the campaign is DONE and every pair is judged (reports read them)."""
    live = session.scalar(
        select(func.count(Run.id)).where(Run.campaign_id == campaign_id, Run.state.in_(LIVE))
    )
    if live:
        return
    campaign = session.get(Campaign, campaign_id)
    if campaign is not None and campaign.state == CampaignState.ACTIVE:
        campaign.state = CampaignState.DONE
        campaign.finished_at = utcnow()
        judge_pending(session, campaign)


def sweep(db_url: str, dispatcher: Dispatcher) -> int:
    """The reconciler's pass over active campaigns (a backstop for a worker that died before
    `advance`). Returns how many children it enqueued."""
    with transaction(db_url) as session:
        active = list(session.scalars(select(Campaign.id).where(Campaign.state == CampaignState.ACTIVE)))
    return sum(advance(db_url, dispatcher, campaign_id) for campaign_id in active)


def cancel_campaign(session: Session, campaign_id: int, caller: Caller | None) -> int:
    """Cancel the campaign: children that have not started end CANCELLED now, running ones stop
    before their next attempt (`cancel_requested`, as for one run). Returns how many ended now."""
    campaign = _locked(session, campaign_id)
    if campaign is None or not visible(campaign, caller):
        raise NotFound(f"campaign {campaign_id} not found")
    if campaign.state != CampaignState.ACTIVE:
        return 0
    campaign.state = CampaignState.CANCELLED
    campaign.finished_at = utcnow()
    children = session.scalars(
        select(Run)
        .where(Run.campaign_id == campaign_id, Run.state.not_in([str(s) for s in RUN_TERMINAL]))
        .options(selectinload(Run.phases))
    )
    now = utcnow()
    ended = 0
    for run in children:
        run.cancel_requested = True
        if run.lease_owner is None or run.lease_expires_at is None or run.lease_expires_at <= now:
            finish_cancelled(session, run)
            run.lease_epoch += 1  # fences a holder whose lease just expired
            ended += 1
    session.flush()
    return ended


def visible(campaign: Campaign, caller: Caller | None) -> bool:
    return caller is None or caller.admin or campaign.owner == caller.owner
