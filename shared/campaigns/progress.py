"""How a campaign is doing: children by state, pairs by state, spend against its caps, and an ETA."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.campaigns.caps import campaign_ledger
from shared.campaigns.flow import visible
from shared.errors import NotFound
from shared.keys import Caller
from shared.models import Campaign, CampaignPair, Run, utcnow
from shared.states import RUN_TERMINAL


class Spend(BaseModel):
    """Σ over the campaign's child runs (the same figures their own ledgers hold). USD as strings."""

    tokens_spent: int
    tokens_reserved: int
    max_tokens: int | None
    usd_spent: str
    usd_reserved: str
    max_usd: str | None


class CampaignProgress(BaseModel):
    id: int
    name: str | None
    mode: str
    state: str
    owner: str | None
    created_at: datetime
    finished_at: datetime | None
    max_parallel_runs: int | None
    children: int
    children_by_state: dict[str, int]
    """Child runs per run state; `held` counts the QUEUED ones still waiting for room."""
    held: int
    ended: int
    pairs_by_state: dict[str, int]
    spend: Spend
    eta_seconds: float | None
    """Remaining children x the time per ended child so far; None until one has ended."""
    cap_reached: str | None
    skipped_sources: list[dict[str, Any]]
    spec: dict[str, Any]


def get_campaign(session: Session, campaign_id: int, caller: Caller | None) -> Campaign:
    campaign = session.get(Campaign, campaign_id)
    if campaign is None or not visible(campaign, caller):
        raise NotFound(f"campaign {campaign_id} not found")
    return campaign


def progress(session: Session, campaign: Campaign) -> CampaignProgress:
    by_state = _counts(
        session,
        select(Run.state, func.count(Run.id)).where(Run.campaign_id == campaign.id).group_by(Run.state),
    )
    held = session.scalar(
        select(func.count(Run.id)).where(Run.campaign_id == campaign.id, Run.held.is_(True))
    )
    pairs = _counts(
        session,
        select(CampaignPair.state, func.count(CampaignPair.id))
        .where(CampaignPair.campaign_id == campaign.id)
        .group_by(CampaignPair.state),
    )
    total = sum(by_state.values())
    ended = sum(n for state, n in by_state.items() if state in RUN_TERMINAL)
    return CampaignProgress(
        id=campaign.id,
        name=campaign.name,
        mode=campaign.mode,
        state=str(campaign.state),
        owner=campaign.owner,
        created_at=campaign.created_at,
        finished_at=campaign.finished_at,
        max_parallel_runs=campaign.max_parallel_runs,
        children=total,
        children_by_state=by_state,
        held=int(held or 0),
        ended=ended,
        pairs_by_state=pairs,
        spend=spend(session, campaign),
        eta_seconds=_eta(campaign, total, ended),
        cap_reached=campaign.cap_reached,
        skipped_sources=list(campaign.skipped),
        spec=campaign.spec,
    )


def _counts(session: Session, query: Any) -> dict[str, int]:
    return {str(state): int(n) for state, n in session.execute(query)}


def spend(session: Session, campaign: Campaign) -> Spend:
    now = campaign_ledger(session, campaign.id)
    return Spend(
        tokens_spent=now.tokens_spent,
        tokens_reserved=now.tokens_reserved,
        max_tokens=campaign.max_tokens,
        usd_spent=str(now.usd_spent),
        usd_reserved=str(now.usd_reserved),
        max_usd=None
        if campaign.max_usd is None
        else str(Decimal(campaign.max_usd).quantize(Decimal("0.000001"))),
    )


def _eta(campaign: Campaign, total: int, ended: int) -> float | None:
    if ended == 0 or ended >= total:
        return None if ended == 0 else 0.0
    elapsed = ((campaign.finished_at or utcnow()) - campaign.created_at).total_seconds()
    return round(elapsed / ended * (total - ended), 1)


def list_campaigns(
    session: Session, caller: Caller | None, limit: int, cursor: int | None
) -> tuple[Sequence[Campaign], int | None]:
    """Newest first; `cursor` is the id to continue below."""
    query = select(Campaign).order_by(Campaign.id.desc()).limit(limit + 1)
    if caller is not None and not caller.admin:
        query = query.where(Campaign.owner == caller.owner)
    if cursor is not None:
        query = query.where(Campaign.id < cursor)
    rows = list(session.scalars(query))
    page = rows[:limit]
    return page, (page[-1].id if len(rows) > limit else None)
