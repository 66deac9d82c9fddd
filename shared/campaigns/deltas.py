"""A run's `ab_deltas` (in `GET /runs/{id}/metrics`): the campaign pairs it is a side of."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from shared.models import CampaignPair


def ab_deltas(session: Session, run_id: int) -> list[dict[str, Any]]:
    """Every pair the run is a side of, with its validity and, once judged, B - A per figure."""
    pairs = session.scalars(
        select(CampaignPair)
        .where(or_(CampaignPair.a_run_id == run_id, CampaignPair.b_run_id == run_id))
        .order_by(CampaignPair.id)
    )
    return [_delta_item(p, run_id) for p in pairs]


def _delta_item(pair: CampaignPair, run_id: int) -> dict[str, Any]:
    item: dict[str, Any] = {
        "campaign_id": pair.campaign_id,
        "source_run_id": pair.source_run_id,
        "sample": pair.sample,
        "side": "A" if pair.a_run_id == run_id else "B",
        "a_run_id": pair.a_run_id,
        "b_run_id": pair.b_run_id,
        "state": str(pair.state),
        "reason": pair.reason,
    }
    if pair.outcome is not None:
        a, b = pair.outcome["a"], pair.outcome["b"]
        item["b_minus_a"] = {
            "success": int(b["success"]) - int(a["success"]),
            "attempts": b["attempts"] - a["attempts"],
            "tokens": sum(b["tokens"].values()) - sum(a["tokens"].values()),
            "cost_usd": str(Decimal(b["cost_usd"]) - Decimal(a["cost_usd"])),
        }
    return item
