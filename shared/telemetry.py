"""Token telemetry: one usage row per LLM call, efficiency and Doctor-avoidance figures, a run's metrics.

Four categories, kept apart because they differ in kind and must never be added together:

* spent — exact figures from the provider, one `LlmUsageEvent` per call; a figure it did not return
  stays NULL and is counted apart (`unknown_calls`), never estimated;
* avoided_context — tokens context selection kept out of prompts (an estimate, from `EfficiencyMetric`);
* doctor_avoided — Doctor calls that failure hardening made unnecessary, valued at an estimate whose
  source and sample size are stored with it (`PhaseMetric`), with the hits of each pattern (the built-in
  six and accepted rules, `rule:<name>`) among the run's attempts;
* ab_deltas — differences between A/B runs, which only campaigns can fill.

Writes are idempotent and race-safe: an insert that loses a race on the unique key is ignored by the
database (`ON CONFLICT DO NOTHING`), and the caller gets the row that won, inside its own transaction.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from decimal import Decimal
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    BindParameter,
    Insert,
    Integer,
    ScalarSelect,
    String,
    Table,
    bindparam,
    func,
    select,
    update,
)
from sqlalchemy.orm import Session

from shared.campaigns.deltas import ab_deltas
from shared.db import insert_ignoring, insert_unless_present
from shared.errors import NotFound
from shared.models import Attempt, EfficiencyMetric, LlmUsageEvent, Phase, PhaseMetric, Run

DOCTOR_ROLE = "doctor"
DOCTOR_FALLBACK_TOKENS = 2500
"""The Doctor estimate when no Doctor call has ever been recorded (source "fallback", sample size 0)."""
RUN_SAMPLE_MIN = 3
GLOBAL_SAMPLE_SIZE = 100
USAGE_FIGURES = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")
"""The token counts of a usage row, as the provider reported them."""
AB_NOTE = "the campaign pairs this run is a side of (B - A once both ended); a run in no campaign has none"


# ------------------------------------------------------------------------------------------- writes


def record_usage(
    session: Session,
    *,
    call_key: str,
    run_id: int | None,
    phase_id: int | None,
    attempt_number: int | None,
    provider: str,
    model: str,
    role: str,
    input_tokens: int | None,
    output_tokens: int | None,
    cache_read_tokens: int | None,
    cache_write_tokens: int | None,
    latency_ms: int | None,
    request_id: str | None,
    cost_usd: Decimal | None,
    plan_draft_id: int | None = None,
) -> LlmUsageEvent:
    """The usage row of call `call_key`; the first record of a key wins, later ones return it unchanged.

    Its owner is `run_id` (a phase's call) or `plan_draft_id` (a plan draft's LLM pass), exactly one."""
    values = {
        "call_key": call_key,
        "run_id": run_id,
        "plan_draft_id": plan_draft_id,
        "phase_id": phase_id,
        "attempt_number": attempt_number,
        "provider": provider,
        "model": model,
        "role": role,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_read_tokens": cache_read_tokens,
        "cache_write_tokens": cache_write_tokens,
        "latency_ms": latency_ms,
        "request_id": request_id,
        "cost_usd": cost_usd,
    }
    insert_unless_present(session, LlmUsageEvent, values, ["call_key"])
    return session.scalars(select(LlmUsageEvent).where(LlmUsageEvent.call_key == call_key)).one()


def recount_phase_tokens(session: Session, phase_id: int) -> None:
    """Set the phase's efficiency row to the sum of its usage rows, for a call recorded late: its
    holder was fenced off (frozen, then taken over) and may have written its usage row after another
    holder's terminal transaction had summed the phase's calls into the efficiency row.

    Its own transaction, after the usage row committed, holding only the phase row's lock: the
    terminal transaction holds that lock while it sums, so this either runs first (and that sum then
    sees the usage row) or waits and recounts with it. Recounting, not adding, is safe to repeat."""
    session.execute(select(Phase.id).where(Phase.id == phase_id).with_for_update())
    total = tokens_spent(phase_id)
    session.execute(
        update(EfficiencyMetric).where(EfficiencyMetric.phase_id == phase_id).values(tokens_spent=total)
    )


def tokens_spent(phase_id: int | BindParameter[int]) -> ScalarSelect[Any]:
    """The phase's exact tokens, summed by the database from its usage rows; NULL when it made no call."""
    both = func.coalesce(LlmUsageEvent.input_tokens, 0) + func.coalesce(LlmUsageEvent.output_tokens, 0)
    return select(func.sum(both)).where(LlmUsageEvent.phase_id == phase_id).scalar_subquery()


EFFICIENCY_KEY = ("run_id", "phase_id", "outcome")


def record_phase_efficiency(
    session: Session, run_id: int, phase_id: int, outcome: str, wall_ms: int | None
) -> bool:
    """Store the phase's efficiency row for `outcome`: the first record wins (True), a later one changes
    nothing (False). The figures are summed by the database in the INSERT itself (one statement):
    tokens spent from the usage rows, context tokens avoided and attempts from the attempt rows. A
    builder that selected no context (script, replay) leaves `estimated_tokens_omitted` out, so an
    avoided figure is NULL unless some attempt knew one (an LLM attempt that left nothing out says 0).
    True when this one inserted."""
    stmt = _phase_efficiency_insert(session.get_bind().dialect.name)
    params = {"e_run": run_id, "e_phase": phase_id, "e_outcome": outcome, "e_wall": wall_ms}
    return session.execute(stmt, params).first() is not None


@lru_cache(maxsize=4)
def _phase_efficiency_insert(dialect: str) -> Insert:
    """Built once per dialect, its figures' subqueries bound to the phase: every terminal phase runs it."""
    phase = bindparam("e_phase", type_=Integer)
    attempts = Attempt.phase_id == phase
    omitted = Attempt.context["estimated_tokens_omitted"].as_integer()
    table = EfficiencyMetric.__table__
    assert isinstance(table, Table)
    return insert_ignoring(dialect, table, EFFICIENCY_KEY).values(
        run_id=bindparam("e_run", type_=Integer),
        phase_id=phase,
        outcome=bindparam("e_outcome", type_=String),
        tokens_spent=tokens_spent(phase),
        tokens_avoided_context=select(func.sum(omitted)).where(attempts).scalar_subquery(),
        attempts=select(func.count()).where(attempts).scalar_subquery(),
        wall_ms=bindparam("e_wall", type_=Integer),
    )


def record_phase_metrics(
    session: Session, run_id: int, phase_id: int, *, failure_hardening_hit: bool, doctor_skipped: bool
) -> PhaseMetric:
    """Upsert the phase's one metrics row. A skipped Doctor is valued at `doctor_tokens_estimate`.

    Idempotent: recording again sets the flags to the new values but keeps an estimate already stored
    (a redelivered task must not move the counterfactual); `doctor_skipped=False` clears it.
    """
    insert_unless_present(session, PhaseMetric, {"run_id": run_id, "phase_id": phase_id}, ["phase_id"])
    row = session.scalars(
        select(PhaseMetric)
        .where(PhaseMetric.phase_id == phase_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()
    row.failure_hardening_hit = failure_hardening_hit
    row.doctor_skipped = doctor_skipped
    if not doctor_skipped:
        row.doctor_tokens_avoided = row.estimate_source = row.estimate_sample_size = None
    elif row.doctor_tokens_avoided is None:
        estimate, source, sample = doctor_tokens_estimate(session, run_id)
        row.doctor_tokens_avoided, row.estimate_source, row.estimate_sample_size = estimate, source, sample
    session.flush()
    return row


# -------------------------------------------------------------------------------- doctor estimate


def doctor_tokens_estimate(session: Session, run_id: int) -> tuple[int, str, int]:
    """(tokens, source, sample size) a Doctor call is expected to cost.

    The median total (input + output) of this run's Doctor calls if there are at least 3 ("run_median");
    else of the last 100 Doctor calls of any run ("global_median"); else `DOCTOR_FALLBACK_TOKENS`
    ("fallback", 0). Calls with an unknown input or output figure are not part of any sample.
    """
    known = (
        select(LlmUsageEvent.input_tokens, LlmUsageEvent.output_tokens)
        .where(LlmUsageEvent.role == DOCTOR_ROLE)
        .where(LlmUsageEvent.input_tokens.is_not(None), LlmUsageEvent.output_tokens.is_not(None))
    )
    local = _totals(session.execute(known.where(LlmUsageEvent.run_id == run_id)))
    if len(local) >= RUN_SAMPLE_MIN:
        return _median(local), "run_median", len(local)
    recent = known.order_by(LlmUsageEvent.id.desc()).limit(GLOBAL_SAMPLE_SIZE)
    pooled = _totals(session.execute(recent))
    if pooled:
        return _median(pooled), "global_median", len(pooled)
    return DOCTOR_FALLBACK_TOKENS, "fallback", 0


def _totals(rows: Iterable[Any]) -> list[int]:
    return [int(row[0]) + int(row[1]) for row in rows]


def _median(values: Sequence[int]) -> int:
    return round(statistics.median(values))


# ------------------------------------------------------------------------------------------ metrics


def run_metrics(session: Session, run_id: int) -> dict[str, Any]:
    """The run's token metrics in four separate categories (see the module docstring). USD as strings."""
    if session.get(Run, run_id) is None:
        raise NotFound(f"run {run_id} not found")
    return {
        "run_id": run_id,
        "spent": _spent(session, run_id),
        "avoided_context": _avoided_context(session, run_id),
        "doctor_avoided": _doctor_avoided(session, run_id),
        "ab_deltas": {"items": ab_deltas(session, run_id), "note": AB_NOTE},
    }


def _spent(session: Session, run_id: int) -> dict[str, Any]:
    events = list(
        session.scalars(
            select(LlmUsageEvent).where(LlmUsageEvent.run_id == run_id).order_by(LlmUsageEvent.id)
        )
    )
    phase_ids = sorted({e.phase_id for e in events if e.phase_id is not None})
    phases = [
        {"phase_id": pid, **usage_totals([e for e in events if e.phase_id == pid])} for pid in phase_ids
    ]
    run_level = [e for e in events if e.phase_id is None]
    if run_level:
        phases.append({"phase_id": None, **usage_totals(run_level)})
    return {"exact": True, "calls": [_call(e) for e in events], "phases": phases, "run": usage_totals(events)}


def usage_totals(events: Sequence[LlmUsageEvent]) -> dict[str, Any]:
    """Sums of the known figures of `events`, each with the count of calls that did not report it."""
    out: dict[str, Any] = {"calls": len(events)}
    for figure in USAGE_FIGURES:
        known = [getattr(e, figure) for e in events if getattr(e, figure) is not None]
        out[figure] = {"known": sum(known), "unknown_calls": len(events) - len(known)}
    costs = [e.cost_usd for e in events if e.cost_usd is not None]
    out["cost_usd"] = {"known": _usd(sum(costs, Decimal(0))), "unknown_calls": len(events) - len(costs)}
    return out


def _call(event: LlmUsageEvent) -> dict[str, Any]:
    return {
        "call_key": event.call_key,
        "phase_id": event.phase_id,
        "attempt_number": event.attempt_number,
        "provider": event.provider,
        "model": event.model,
        "role": event.role,
        **{figure: getattr(event, figure) for figure in USAGE_FIGURES},
        "latency_ms": event.latency_ms,
        "request_id": event.request_id,
        "cost_usd": None if event.cost_usd is None else _usd(event.cost_usd),
        "created_at": event.created_at.isoformat(),
    }


def _avoided_context(session: Session, run_id: int) -> dict[str, Any]:
    rows = list(session.scalars(select(EfficiencyMetric).where(EfficiencyMetric.run_id == run_id)))
    known = [r.tokens_avoided_context for r in rows if r.tokens_avoided_context is not None]
    return {"estimate": True, "tokens": sum(known), "rows": len(rows), "unknown_rows": len(rows) - len(known)}


def _doctor_avoided(session: Session, run_id: int) -> dict[str, Any]:
    query = (
        select(PhaseMetric, Phase.index)
        .join(Phase, Phase.id == PhaseMetric.phase_id)
        .where(PhaseMetric.run_id == run_id)
        .order_by(Phase.index)
    )
    phases = [_phase_metric(row, index) for row, index in session.execute(query)]
    return {
        "estimate": True,
        "failure_hardening_hits": sum(1 for p in phases if p["failure_hardening_hit"]),
        "doctor_skipped": sum(1 for p in phases if p["doctor_skipped"]),
        "tokens": sum(p["doctor_tokens_avoided"] or 0 for p in phases),
        "patterns": pattern_hits(session, run_id),
        "phases": phases,
    }


def pattern_hits(session: Session, run_id: int) -> dict[str, int]:
    """Attempts of the run each hardening pattern or accepted rule explained, by pattern name."""
    query = select(Attempt.mitigation).where(Attempt.run_id == run_id, Attempt.mitigation.is_not(None))
    names = (m.get("pattern") for m in session.scalars(query) if isinstance(m, dict))
    return dict(sorted(Counter(str(n) for n in names if n).items()))


def _phase_metric(row: PhaseMetric, index: int) -> dict[str, Any]:
    return {
        "phase_id": row.phase_id,
        "phase_index": index,
        "failure_hardening_hit": row.failure_hardening_hit,
        "doctor_skipped": row.doctor_skipped,
        "doctor_tokens_avoided": row.doctor_tokens_avoided,
        "estimate_source": row.estimate_source,
        "estimate_sample_size": row.estimate_sample_size,
    }


def _usd(value: Decimal) -> str:
    return str(value.quantize(Decimal("0.000001")))
