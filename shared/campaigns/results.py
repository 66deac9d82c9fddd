"""The campaign's A/B report from the database, persisted on the campaign.

The report is recomputed only when a pair was judged since the last one; otherwise the persisted
report is returned as it was, so readers see the same figures (the bootstrap is seeded besides).
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from sqlalchemy import Row, select
from sqlalchemy.orm import Session

from shared.campaigns.judge import judge_pending
from shared.campaigns.progress import spend
from shared.campaigns.report import ExcludedPair, PairOutcome, ReportMeta, Tokens, build_report
from shared.campaigns.spec import CampaignSpec
from shared.models import Campaign, CampaignPair, utcnow
from shared.states import PairState

EXCLUDED = {PairState.INVALID: "invalid", PairState.INFRA_INVALID: "infra_invalid"}


def campaign_report(session: Session, campaign: Campaign) -> dict[str, Any]:
    """Judge what has ended, then return the report (recomputed only when something changed)."""
    judged = judge_pending(session, campaign)
    if judged == 0 and campaign.report is not None:
        return campaign.report
    spec = CampaignSpec.model_validate(campaign.spec)
    columns = (CampaignPair.source_run_id, CampaignPair.sample, CampaignPair.a_run_id, CampaignPair.b_run_id)
    query = select(*columns, CampaignPair.state, CampaignPair.reason, CampaignPair.outcome)
    pairs = session.execute(query.where(CampaignPair.campaign_id == campaign.id)).all()
    valid = [_outcome(p) for p in pairs if p.state == PairState.VALID]
    excluded = [_excluded(p) for p in pairs if p.state in EXCLUDED]
    pending = sum(1 for p in pairs if p.state == PairState.PENDING)
    report = build_report(
        _meta(campaign, spec),
        valid,
        excluded,
        pending,
        seed=campaign.seed,
        min_valid_pairs=spec.min_valid_pairs,
    )
    report["spend"] = json.loads(spend(session, campaign).model_dump_json())
    campaign.report = report
    campaign.report_at = utcnow()
    session.flush()
    return report


def _meta(campaign: Campaign, spec: CampaignSpec) -> ReportMeta:
    arms = {arm: _describe(o.model_dump(exclude_none=True)) for arm, o in spec.arm_overrides().items()}
    if spec.arms is None:
        arm_a, arm_b = "the source runs as recorded", f"re-run ({spec.mode}) with {arms['B']}"
    else:
        arm_a = f"control, re-run now with {arms['control']}"
        arm_b = f"treatment, re-run now with {arms['treatment']}"
    return ReportMeta(
        campaign_id=campaign.id,
        name=campaign.name,
        mode=campaign.mode,
        arm_a=arm_a,
        arm_b=arm_b,
        repeats=spec.repeats,
    )


def _describe(overrides: dict[str, Any]) -> str:
    changed = {k: v for k, v in overrides.items() if v}
    return json.dumps(changed, sort_keys=True) if changed else "no overrides"


def _outcome(pair: Row[Any]) -> PairOutcome:
    assert pair.outcome is not None
    a, b = pair.outcome["a"], pair.outcome["b"]
    return PairOutcome(
        source_run_id=pair.source_run_id,
        sample=pair.sample,
        a_run_id=pair.a_run_id,
        b_run_id=pair.b_run_id,
        a_success=bool(a["success"]),
        b_success=bool(b["success"]),
        a_attempts=int(a["attempts"]),
        b_attempts=int(b["attempts"]),
        a_tokens=Tokens(**a["tokens"]),
        b_tokens=Tokens(**b["tokens"]),
        a_cost_usd=Decimal(a["cost_usd"]),
        b_cost_usd=Decimal(b["cost_usd"]),
        a_wall_s=a["wall_s"],
        b_wall_s=b["wall_s"],
    )


def _excluded(pair: Row[Any]) -> ExcludedPair:
    return ExcludedPair(
        source_run_id=pair.source_run_id,
        sample=pair.sample,
        a_run_id=pair.a_run_id,
        b_run_id=pair.b_run_id,
        kind=EXCLUDED[PairState(pair.state)],
        reason=pair.reason or "",
    )
