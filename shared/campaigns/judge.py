"""Judging a pair once both its runs have ended: is it a fair comparison, and what did each side do.

A pair is VALID only when both runs started from the same base commit (unless the campaign overrides
`base_ref`), ran the same phase specs, and used the same model mapping (unless the campaign overrides
`models`), and neither was ended by the fleet. A side ended by infrastructure (deliveries used up,
provider outage, full disk, bad credentials) makes the pair INFRA_INVALID: it is listed, never scored
as a model failure. A cancelled side, or one the campaign's cap stopped, makes it INVALID.

Each side's figures cover the phases the campaign re-ran: in `failed_phases` mode the phases before
the source's first failure were reused, not re-run, so the source's spend on them is left out too.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.campaigns.sources import first_to_rerun
from shared.campaigns.spec import CampaignMode, CampaignSpec
from shared.models import Attempt, Campaign, CampaignPair, LlmUsageEvent, Phase, Run, utcnow
from shared.states import FailureKind, PairState, RunState

TOKEN_FIGURES = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")


@dataclass(frozen=True)
class Verdict:
    state: PairState
    reason: str | None = None


def judge_pending(session: Session, campaign: Campaign) -> int:
    """Judge every PENDING pair whose two runs have ended; returns how many were judged."""
    spec = CampaignSpec.model_validate(campaign.spec)
    pairs = list(
        session.scalars(
            select(CampaignPair).where(
                CampaignPair.campaign_id == campaign.id, CampaignPair.state == PairState.PENDING
            )
        )
    )
    run_ids = {i for p in pairs for i in (p.a_run_id, p.b_run_id, p.source_run_id)}
    runs = {r.id: r for r in session.scalars(select(Run).where(Run.id.in_(run_ids)))} if run_ids else {}
    ended = [p for p in pairs if _ended(runs[p.a_run_id]) and _ended(runs[p.b_run_id])]
    figures = _figures(session, {i for p in ended for i in (p.a_run_id, p.b_run_id)})
    now = utcnow()
    for pair in ended:
        a, b = runs[pair.a_run_id], runs[pair.b_run_id]
        verdict = judge(spec, a, b)
        start = _rerun_from(spec, runs[pair.source_run_id])
        pair.state = verdict.state
        pair.reason = verdict.reason
        pair.outcome = {"a": _side(a, figures, start), "b": _side(b, figures, start)}
        pair.judged_at = now
    session.flush()
    return len(ended)


def _ended(run: Run) -> bool:
    return RunState(run.state).terminal


def judge(spec: CampaignSpec, a: Run, b: Run) -> Verdict:
    """The pair's validity (see the module docstring); the first reason found is given."""
    sides = (("A", a), ("B", b))
    for side, run in sides:
        if run.failure_kind == FailureKind.INFRA:
            why = (run.failure_reason or "")[:300]
            return Verdict(PairState.INFRA_INVALID, f"{side} (run {run.id}) ended by infrastructure: {why}")
    for side, run in sides:
        if run.state == RunState.CANCELLED:
            why = f": {run.failure_reason[:200]}" if run.failure_reason else ""
            return Verdict(PairState.INVALID, f"{side} (run {run.id}) was cancelled{why}")
        if run.failure_kind == FailureKind.CAMPAIGN_CAP:
            return Verdict(PairState.INVALID, f"{side} (run {run.id}) was stopped by the campaign's cap")
    if not spec.overrides_base_ref and a.base_sha != b.base_sha:
        return Verdict(PairState.INVALID, f"base commits differ: A {a.base_sha[:12]}, B {b.base_sha[:12]}")
    if phases_hash(a.spec) != phases_hash(b.spec):
        return Verdict(PairState.INVALID, "phase specs differ")
    if not spec.overrides_models and models_hash(a.config) != models_hash(b.config):
        return Verdict(PairState.INVALID, "model mappings differ (and the campaign does not override models)")
    return Verdict(PairState.VALID)


def phases_hash(spec: dict[str, Any]) -> str:
    """Identity of what a run's phases ask for, whatever its base ref, name or config."""
    body = {"repo": spec.get("repo"), "phases": spec.get("phases")}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def models_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config.get("models"), sort_keys=True).encode()).hexdigest()


def _rerun_from(spec: CampaignSpec, source: Run) -> int:
    if spec.mode != CampaignMode.FAILED_PHASES:
        return 0
    failed = first_to_rerun(source)
    return failed.index if failed is not None else len(source.phases)


@dataclass
class _Figures:
    """Per run, per phase index (None = run-level calls): attempts, tokens by category, cost, wall."""

    attempts: dict[int, dict[int, int]]
    usage: dict[int, dict[int | None, list[Any]]]
    wall: dict[int, dict[int, float]]


def _figures(session: Session, run_ids: set[int]) -> _Figures:
    attempts: dict[int, dict[int, int]] = defaultdict(dict)
    usage: dict[int, dict[int | None, list[Any]]] = defaultdict(dict)
    wall: dict[int, dict[int, float]] = defaultdict(dict)
    if not run_ids:
        return _Figures(attempts, usage, wall)
    counted = (
        select(Attempt.run_id, Phase.index, func.count(Attempt.id))
        .join(Phase, Phase.id == Attempt.phase_id)
        .where(Attempt.run_id.in_(run_ids))
        .group_by(Attempt.run_id, Phase.index)
    )
    for run_id, index, n in session.execute(counted):
        attempts[run_id][index] = int(n)
    sums = [func.coalesce(func.sum(getattr(LlmUsageEvent, f)), 0) for f in TOKEN_FIGURES]
    spent = (
        select(LlmUsageEvent.run_id, Phase.index, *sums, func.coalesce(func.sum(LlmUsageEvent.cost_usd), 0))
        .outerjoin(Phase, Phase.id == LlmUsageEvent.phase_id)
        .where(LlmUsageEvent.run_id.in_(run_ids))
        .group_by(LlmUsageEvent.run_id, Phase.index)
    )
    for run_id, index, *values in session.execute(spent):
        usage[run_id][index] = values
    timed = select(Phase.run_id, Phase.index, Phase.started_at, Phase.finished_at).where(
        Phase.run_id.in_(run_ids)
    )
    for run_id, index, started, finished in session.execute(timed):
        if started is not None and finished is not None:
            wall[run_id][index] = (finished - started).total_seconds()
    return _Figures(attempts, usage, wall)


def _side(run: Run, figures: _Figures, start: int) -> dict[str, Any]:
    """One side's figures over the phases from `start` on (run-level calls always count)."""
    tokens = [0, 0, 0, 0]
    cost = Decimal(0)
    for index, values in figures.usage[run.id].items():
        if index is None or index >= start:
            tokens = [t + int(v) for t, v in zip(tokens, values[:4], strict=True)]
            cost += Decimal(str(values[4]))
    walls = [w for i, w in figures.wall[run.id].items() if i >= start]
    return {
        "run_id": run.id,
        "success": run.state == RunState.DONE_SUCCESS,
        "state": str(run.state),
        "failure_kind": None if run.failure_kind is None else str(run.failure_kind),
        "attempts": sum(n for i, n in figures.attempts[run.id].items() if i >= start),
        "tokens": dict(zip(("input", "output", "cache_read", "cache_write"), tokens, strict=True)),
        "cost_usd": str(cost.quantize(Decimal("0.000001"))),
        "wall_s": round(sum(walls), 3) if walls else None,
    }
