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

from sqlalchemy import func, select, union, update
from sqlalchemy.orm import Session

from shared.campaigns.spec import CampaignMode, CampaignSpec
from shared.models import Attempt, Campaign, CampaignPair, LlmUsageEvent, Phase, Run, utcnow
from shared.states import FailureKind, PairState, PhaseState, RunState

TOKEN_FIGURES = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")


@dataclass(frozen=True)
class Verdict:
    state: PairState
    reason: str | None = None


@dataclass(frozen=True)
class RunFacts:
    """What judging needs of a run, read as columns (not whole rows: a campaign has thousands)."""

    id: int
    state: str
    failure_kind: str | None
    failure_reason: str | None
    base_sha: str
    spec_hash: str
    models: str

    @property
    def ended(self) -> bool:
        return RunState(self.state).terminal


def judge_pending(session: Session, campaign: Campaign) -> int:
    """Judge every PENDING pair whose two runs have ended; returns how many were judged."""
    spec = CampaignSpec.model_validate(campaign.spec)
    pending = (CampaignPair.campaign_id == campaign.id, CampaignPair.state == PairState.PENDING)
    pairs = session.execute(
        select(
            CampaignPair.id, CampaignPair.source_run_id, CampaignPair.a_run_id, CampaignPair.b_run_id
        ).where(*pending)
    ).all()
    if not pairs:
        return 0
    runs = _facts(session, campaign.id)
    ended = [p for p in pairs if runs[p.a_run_id].ended and runs[p.b_run_id].ended]
    figures = _figures(session, campaign.id)
    starts = _rerun_from(session, spec, campaign.id)
    phases = _phase_hashes(session, campaign.id) if spec.overrides_base_ref else {}
    now = utcnow()
    updates = []
    for pair in ended:
        a, b = runs[pair.a_run_id], runs[pair.b_run_id]
        verdict = judge(spec, a, b, phases)
        start = starts.get(pair.source_run_id, 0)
        outcome = {"a": _side(a, figures, start), "b": _side(b, figures, start)}
        updates.append(
            {
                "id": pair.id,
                "state": verdict.state,
                "reason": verdict.reason,
                "outcome": outcome,
                "judged_at": now,
            }
        )
    if updates:
        session.execute(update(CampaignPair), updates)  # one executemany, by primary key
    return len(updates)


def _pair_runs(campaign_id: int) -> Any:
    """The ids of every run on either side of the campaign's pairs (a subquery, not a parameter list)."""
    mine = CampaignPair.campaign_id == campaign_id
    return union(select(CampaignPair.a_run_id).where(mine), select(CampaignPair.b_run_id).where(mine))


def _facts(session: Session, campaign_id: int) -> dict[int, RunFacts]:
    query = select(
        Run.id, Run.state, Run.failure_kind, Run.failure_reason, Run.base_sha, Run.spec_hash, Run.config
    ).where(Run.id.in_(_pair_runs(campaign_id)))
    return {
        row.id: RunFacts(
            row.id,
            row.state,
            row.failure_kind,
            row.failure_reason,
            row.base_sha,
            row.spec_hash,
            models_hash(row.config),
        )
        for row in session.execute(query)
    }


def _phase_hashes(session: Session, campaign_id: int) -> dict[int, str]:
    """`phases_hash` per run, needed only when the base ref is the override (it changes `spec_hash`)."""
    query = select(Run.id, Run.spec).where(Run.id.in_(_pair_runs(campaign_id)))
    return {run_id: phases_hash(body) for run_id, body in session.execute(query)}


def judge(spec: CampaignSpec, a: RunFacts, b: RunFacts, phases: dict[int, str]) -> Verdict:
    """The pair's validity (see the module docstring); the first reason found is given. `phases` holds
    each run's `phases_hash` when the base ref is overridden; otherwise `spec_hash` (which covers the
    repo, base ref and phases, not the config) decides."""
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
    same_phases = phases[a.id] == phases[b.id] if phases else a.spec_hash == b.spec_hash
    if not same_phases:
        return Verdict(PairState.INVALID, "phase specs differ")
    if not spec.overrides_models and a.models != b.models:
        return Verdict(PairState.INVALID, "model mappings differ (and the campaign does not override models)")
    return Verdict(PairState.VALID)


def phases_hash(spec: dict[str, Any]) -> str:
    """Identity of what a run's phases ask for, whatever its base ref, name or config."""
    body = {"repo": spec.get("repo"), "phases": spec.get("phases")}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def models_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config.get("models"), sort_keys=True).encode()).hexdigest()


def _rerun_from(session: Session, spec: CampaignSpec, campaign_id: int) -> dict[int, int]:
    """Per source run, the first phase the campaign re-ran (only `failed_phases` skips any)."""
    if spec.mode != CampaignMode.FAILED_PHASES:
        return {}
    sources = select(CampaignPair.source_run_id).where(CampaignPair.campaign_id == campaign_id)
    query = (
        select(Phase.run_id, func.min(Phase.index))
        .where(Phase.run_id.in_(sources), Phase.state != PhaseState.COMPLETE)
        .group_by(Phase.run_id)
    )
    return {int(run_id): int(index) for run_id, index in session.execute(query)}


@dataclass
class _Figures:
    """Per run, per phase index (None = run-level calls): attempts, tokens by category, cost, wall."""

    attempts: dict[int, dict[int, int]]
    usage: dict[int, dict[int | None, list[Any]]]
    wall: dict[int, dict[int, float]]


def _figures(session: Session, campaign_id: int) -> _Figures:
    attempts: dict[int, dict[int, int]] = defaultdict(dict)
    usage: dict[int, dict[int | None, list[Any]]] = defaultdict(dict)
    wall: dict[int, dict[int, float]] = defaultdict(dict)
    runs = _pair_runs(campaign_id)
    counted = (
        select(Attempt.run_id, Phase.index, func.count(Attempt.id))
        .join(Phase, Phase.id == Attempt.phase_id)
        .where(Attempt.run_id.in_(runs))
        .group_by(Attempt.run_id, Phase.index)
    )
    for run_id, index, n in session.execute(counted):
        attempts[run_id][index] = int(n)
    sums = [func.coalesce(func.sum(getattr(LlmUsageEvent, f)), 0) for f in TOKEN_FIGURES]
    spent = (
        select(LlmUsageEvent.run_id, Phase.index, *sums, func.coalesce(func.sum(LlmUsageEvent.cost_usd), 0))
        .outerjoin(Phase, Phase.id == LlmUsageEvent.phase_id)
        .where(LlmUsageEvent.run_id.in_(runs))
        .group_by(LlmUsageEvent.run_id, Phase.index)
    )
    for run_id, index, *values in session.execute(spent):
        usage[run_id][index] = values
    timed = select(Phase.run_id, Phase.index, Phase.started_at, Phase.finished_at).where(
        Phase.run_id.in_(runs), Phase.finished_at.is_not(None)
    )
    for run_id, index, started, finished in session.execute(timed):
        if started is not None and finished is not None:
            wall[run_id][index] = (finished - started).total_seconds()
    return _Figures(attempts, usage, wall)


def _side(run: RunFacts, figures: _Figures, start: int) -> dict[str, Any]:
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
