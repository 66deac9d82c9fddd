"""What the dashboard pages show, read from the database (Postgres is the source of truth; Flower's
in-memory state is only linked). Every query is bounded: a page, a run, a campaign, today."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time
from decimal import Decimal
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from shared.keys import Caller
from shared.models import Attempt, Campaign, LlmUsageEvent, Phase, PlanDraft, Run
from shared.runs import visible_to
from shared.states import PhaseState, RunState

PAGE = 50


@dataclass(frozen=True)
class RunFilter:
    state: str | None = None
    repo: str | None = None
    name: str | None = None
    campaign: int | None = None
    cursor: int | None = None

    def query_string(self, cursor: int | None) -> str:
        parts = {"state": self.state, "repo": self.repo, "name": self.name, "campaign": self.campaign}
        pairs = [f"{k}={v}" for k, v in parts.items() if v not in (None, "")]
        return "&".join([*pairs, *([f"cursor={cursor}"] if cursor else [])])


def today_start() -> datetime:
    return datetime.combine(datetime.now(UTC).date(), time(), tzinfo=UTC)


def overview(session: Session, caller: Caller) -> dict[str, Any]:
    """Runs by state today, executing phases, spend today: the caller's runs, and its plan drafts'
    LLM passes (their usage rows have no run)."""
    since = today_start()
    mine = visible_to(select(Run.id), caller).where(Run.created_at >= since)
    drafts = select(PlanDraft.id).where(PlanDraft.created_at >= since)
    drafts = drafts if caller.admin else drafts.where(PlanDraft.owner == caller.owner)
    counted = visible_to(select(Run.state, func.count(Run.id)), caller).where(Run.created_at >= since)
    by_state = {str(state): int(n) for state, n in session.execute(counted.group_by(Run.state))}
    spend = session.execute(
        select(
            func.coalesce(func.sum(LlmUsageEvent.input_tokens), 0),
            func.coalesce(func.sum(LlmUsageEvent.output_tokens), 0),
            func.coalesce(func.sum(LlmUsageEvent.cost_usd), 0),
            func.count(LlmUsageEvent.id),
        ).where(
            LlmUsageEvent.created_at >= since,
            or_(
                LlmUsageEvent.run_id.in_(mine.scalar_subquery()),
                LlmUsageEvent.plan_draft_id.in_(drafts.scalar_subquery()),
            ),
        )
    ).one()
    executing = session.scalar(select(func.count(Phase.id)).where(Phase.state == PhaseState.EXECUTING))
    return {
        "since": since,
        "by_state": by_state,
        "runs_today": sum(by_state.values()),
        "tokens_in": int(spend[0] or 0),
        "tokens_out": int(spend[1] or 0),
        "usd": Decimal(str(spend[2])).quantize(Decimal("0.000001")),
        "calls": int(spend[3]),
        "executing": int(executing or 0),
        "campaigns": active_campaigns(session, caller),
    }


def active_campaigns(session: Session, caller: Caller) -> list[Campaign]:
    query = select(Campaign).where(Campaign.state == "ACTIVE").order_by(Campaign.id.desc()).limit(10)
    if not caller.admin:
        query = query.where(Campaign.owner == caller.owner)
    return list(session.scalars(query))


def runs_page(session: Session, caller: Caller, flt: RunFilter) -> tuple[list[Run], int | None]:
    """Newest first, keyset-paginated (`cursor`: the id to continue below), so page 500 costs as page 1."""
    query = visible_to(select(Run), caller).order_by(Run.id.desc()).limit(PAGE + 1)
    if flt.state:
        query = query.where(Run.state == flt.state)
    if flt.repo:
        query = query.where(Run.repo == flt.repo)
    if flt.name:
        escaped = flt.name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(Run.name.like(escaped + "%", escape="\\"))
    if flt.campaign:
        query = query.where(Run.campaign_id == flt.campaign)
    if flt.cursor:
        query = query.where(Run.id < flt.cursor)
    rows = list(session.scalars(query))
    page = rows[:PAGE]
    return page, (page[-1].id if len(rows) > PAGE else None)


def phase_summaries(session: Session, run_ids: list[int]) -> dict[int, list[tuple[int, str]]]:
    """(index, state) of every phase of these runs, for the list's progress column (one query)."""
    out: dict[int, list[tuple[int, str]]] = {i: [] for i in run_ids}
    if run_ids:
        query = select(Phase.run_id, Phase.index, Phase.state).where(Phase.run_id.in_(run_ids))
        for run_id, index, state in session.execute(query.order_by(Phase.run_id, Phase.index)):
            out[run_id].append((index, str(state)))
    return out


@dataclass(frozen=True)
class AttemptLine:
    """An attempt as the run page lists it, without its big texts."""

    phase_index: int
    number: int
    outcome: str
    failure_reason: str | None
    model: str | None
    worker: str
    seconds: float
    commit_sha: str | None
    advice: str | None
    calls: int
    tokens: int
    usd: Decimal


def attempt_lines(session: Session, run: Run) -> dict[int, list[AttemptLine]]:
    """Per phase index, its attempts with their LLM call totals (two queries for the whole run)."""
    usage: dict[tuple[int | None, int | None], list[Any]] = {}
    totals = (
        select(
            LlmUsageEvent.phase_id,
            LlmUsageEvent.attempt_number,
            func.count(LlmUsageEvent.id),
            func.coalesce(func.sum(LlmUsageEvent.input_tokens), 0)
            + func.coalesce(func.sum(LlmUsageEvent.output_tokens), 0),
            func.coalesce(func.sum(LlmUsageEvent.cost_usd), 0),
        )
        .where(LlmUsageEvent.run_id == run.id)
        .group_by(LlmUsageEvent.phase_id, LlmUsageEvent.attempt_number)
    )
    for phase_id, number, calls, tokens, usd in session.execute(totals):
        usage[(phase_id, number)] = [int(calls), int(tokens or 0), Decimal(str(usd))]
    index_of = {p.id: p.index for p in run.phases}
    columns = (
        Attempt.phase_id,
        Attempt.number,
        Attempt.outcome,
        Attempt.failure_reason,
        Attempt.model,
        Attempt.worker,
        Attempt.started_at,
        Attempt.finished_at,
        Attempt.commit_sha,
        Attempt.mitigation,
        Attempt.doctor,
    )
    out: dict[int, list[AttemptLine]] = {p.index: [] for p in run.phases}
    for row in session.execute(
        select(*columns).where(Attempt.run_id == run.id).order_by(Attempt.phase_id, Attempt.number)
    ):
        calls, tokens, usd = usage.get((row.phase_id, row.number), [0, 0, Decimal(0)])
        out[index_of[row.phase_id]].append(
            AttemptLine(
                index_of[row.phase_id],
                row.number,
                str(row.outcome),
                row.failure_reason,
                row.model,
                row.worker,
                (row.finished_at - row.started_at).total_seconds(),
                row.commit_sha,
                advice(row.mitigation, row.doctor),
                calls,
                tokens,
                usd,
            )
        )
    return out


def advice(mitigation: dict[str, Any] | None, doctor: dict[str, Any] | None) -> str | None:
    """What recovery said: the hardening pattern's advice, or the Doctor's diagnosis and advice."""
    if mitigation and mitigation.get("advice"):
        return f"hardening ({mitigation.get('pattern', 'pattern')}): {mitigation['advice']}"
    if doctor:
        parts = [str(doctor.get(k)) for k in ("diagnosis", "action", "advice") if doctor.get(k)]
        return "Doctor: " + " — ".join(parts) if parts else None
    return None


def attempt_detail(
    session: Session, run: Run, index: int, number: int
) -> tuple[Phase, Attempt, list[LlmUsageEvent]] | None:
    phase = next((p for p in run.phases if p.index == index), None)
    if phase is None:
        return None
    attempt = session.scalars(
        select(Attempt).where(Attempt.phase_id == phase.id, Attempt.number == number)
    ).first()
    if attempt is None:
        return None
    calls = session.scalars(
        select(LlmUsageEvent)
        .where(LlmUsageEvent.phase_id == phase.id, LlmUsageEvent.attempt_number == number)
        .order_by(LlmUsageEvent.id)
    ).all()
    return phase, attempt, list(calls)


def diff_lines(patch: str | None, limit: int = 4000) -> list[tuple[str, str]]:
    """(css class, text) per line of a unified diff, capped: the page renders it readably."""
    out: list[tuple[str, str]] = []
    for line in (patch or "").splitlines()[:limit]:
        if line.startswith(("+++", "---", "diff ", "index ")):
            kind = "meta"
        elif line.startswith("@@"):
            kind = "hunk"
        elif line.startswith("+"):
            kind = "add"
        elif line.startswith("-"):
            kind = "del"
        else:
            kind = "ctx"
        out.append((kind, line))
    return out


def is_live(run: Run) -> bool:
    return not RunState(run.state).terminal


def hand_backs(session: Session, limit: int = 100) -> list[tuple[int, int, str, str]]:
    """(run, phase index, phase name, reason) of phases waiting after a hand-back (a host fault, the
    LLM provider down, a draining worker): no attempt was spent, the reason says why."""
    query = (
        select(Phase.run_id, Phase.index, Phase.name, Phase.failure_reason)
        .where(Phase.state == PhaseState.QUEUED, Phase.failure_reason.like("%handed back%"))
        .order_by(Phase.id.desc())
        .limit(limit)
    )
    return [(r, i, n, reason or "") for r, i, n, reason in session.execute(query)]
