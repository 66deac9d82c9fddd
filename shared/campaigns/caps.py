"""A campaign's token and USD caps: shared by all its child runs, reserved before each LLM call.

The protocol extends the run caps of `shared.budget` (read that first). Before a child reserves a
call's worst case on its own run, in the SAME transaction, `reserve_campaign`:

1. locks the campaign row with an UPDATE (a row lock on Postgres, the write lock on SQLite), so the
   reservations of one campaign's children are taken one at a time;
2. sums `spent + reserved` over the campaign's runs and refuses (`CampaignBudgetExceeded`) if adding
   this call's worst case would pass a cap.

The run's own reservation follows under the same lock, and every settle and orphan charge moves
figures between a run's `reserved` and `spent`, so the campaign's spend is by definition the sum of
its runs' and can pass a cap only by what one call overran its own worst case. No second ledger
exists to drift. The lock is held for one short transaction per LLM call, never during the call.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from shared.budget import BudgetExceeded, Ledger
from shared.db import transaction
from shared.errors import AutopackError
from shared.models import Campaign, Run


@dataclass(frozen=True)
class CampaignCaps:
    campaign_id: int
    max_tokens: int | None
    max_usd: Decimal | None

    @property
    def any(self) -> bool:
        return self.max_tokens is not None or self.max_usd is not None


class CampaignBudgetExceeded(BudgetExceeded):
    """A call's worst case does not fit under its campaign's cap."""

    def __init__(
        self, campaign_id: int, run_id: int, cap: str, limit: int | Decimal, now: Ledger, worst: int | Decimal
    ) -> None:
        spent, reserved = now.figures(cap)
        AutopackError.__init__(
            self,
            f"campaign {campaign_id} (run {run_id}): {cap} cap {limit} would be exceeded: spent {spent} "
            f"+ reserved {reserved} over its runs + this call's worst case {worst} > {limit}",
        )
        self.campaign_id = campaign_id
        self.run_id = run_id
        self.cap = cap
        self.limit = limit
        self.spent = spent
        self.reserved = reserved
        self.worst_case = worst


def caps_of(session: Session, campaign_id: int | None) -> CampaignCaps | None:
    """The campaign's caps, or None when the run belongs to no campaign or the campaign has none."""
    if campaign_id is None:
        return None
    row = session.execute(
        select(Campaign.max_tokens, Campaign.max_usd).where(Campaign.id == campaign_id)
    ).first()
    if row is None:
        return None
    caps = CampaignCaps(campaign_id, row[0], None if row[1] is None else Decimal(row[1]))
    return caps if caps.any else None


def reserve_campaign(session: Session, caps: CampaignCaps, run_id: int, *, tokens: int, usd: Decimal) -> None:
    """Lock the campaign and check the call fits its caps; the caller reserves on the run next, in the
    same transaction (see the module docstring)."""
    session.execute(
        update(Campaign)
        .where(Campaign.id == caps.campaign_id)
        .values(id=Campaign.id)
        .execution_options(synchronize_session=False)
    )
    now = campaign_ledger(session, caps.campaign_id)
    if caps.max_tokens is not None and now.tokens_spent + now.tokens_reserved + tokens > caps.max_tokens:
        raise CampaignBudgetExceeded(caps.campaign_id, run_id, "tokens", caps.max_tokens, now, tokens)
    if caps.max_usd is not None and now.usd_spent + now.usd_reserved + usd > caps.max_usd:
        raise CampaignBudgetExceeded(caps.campaign_id, run_id, "usd", caps.max_usd, now, usd)


def campaign_ledger(session: Session, campaign_id: int) -> Ledger:
    """The sums of the campaign's runs' budget figures, as stored now."""
    row = session.execute(
        select(
            func.coalesce(func.sum(Run.tokens_spent), 0),
            func.coalesce(func.sum(Run.tokens_reserved), 0),
            func.coalesce(func.sum(Run.usd_spent), 0),
            func.coalesce(func.sum(Run.usd_reserved), 0),
        ).where(Run.campaign_id == campaign_id)
    ).one()
    usd_spent = Decimal(str(row[2])).quantize(Decimal("0.000001"))
    usd_reserved = Decimal(str(row[3])).quantize(Decimal("0.000001"))
    return Ledger(int(row[0]), int(row[1]), usd_spent, usd_reserved)


def note_cap_reached(db_url: str, campaign_id: int, reason: str) -> None:
    """Remember that a cap refused a call: the campaign starts no more children (see `release`)."""
    with transaction(db_url) as session:
        session.execute(
            update(Campaign)
            .where(Campaign.id == campaign_id, Campaign.cap_reached.is_(None))
            .values(cap_reached=reason[:2000])
        )
