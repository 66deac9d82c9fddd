"""Which earlier runs a campaign takes, and which of them it can re-run in its mode (and why not)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Select, select
from sqlalchemy.orm import Session, selectinload

from shared.admission import check_repo
from shared.campaigns.spec import CampaignMode, RunFilter, Source
from shared.errors import InvalidSpec
from shared.keys import Caller
from shared.models import Phase, Run
from shared.runs import visible_to
from shared.settings import Settings
from shared.states import PhaseState, RunState


@dataclass(frozen=True)
class Skipped:
    """A source run the campaign leaves out, and why (returned to the user, never silent)."""

    run_id: int
    reason: str


def select_sources(session: Session, source: Source, caller: Caller | None) -> list[Run]:
    """The source runs, oldest first, with their phases; listed ids that do not exist (or belong to
    another owner) are an error naming them."""
    query = visible_to(select(Run), caller).options(selectinload(Run.phases))
    if source.run_ids is not None:
        wanted = sorted(set(source.run_ids))
        runs = list(session.scalars(query.where(Run.id.in_(wanted)).order_by(Run.id)))
        missing = sorted(set(wanted) - {r.id for r in runs})
        if missing:
            raise InvalidSpec("source.run_ids", f"runs not found: {missing[:20]}")
        return runs
    assert source.filter is not None
    newest = _filtered(query, source.filter).order_by(Run.id.desc()).limit(source.filter.limit)
    return sorted(session.scalars(newest), key=lambda r: r.id)


def _filtered(query: Select[Run], flt: RunFilter) -> Select[Run]:
    query = query.where(Run.state.in_([str(s) for s in flt.states]))
    if flt.repo is not None:
        query = query.where(Run.repo == flt.repo)
    if flt.name_prefix is not None:
        escaped = flt.name_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(Run.name.like(escaped + "%", escape="\\"))
    if flt.created_since is not None:
        query = query.where(Run.created_at >= flt.created_since)
    if flt.created_until is not None:
        query = query.where(Run.created_at < flt.created_until)
    if flt.campaign_id is not None:
        query = query.where(Run.campaign_id == flt.campaign_id)
    return query


def eligible(runs: Sequence[Run], mode: CampaignMode, settings: Settings) -> tuple[list[Run], list[Skipped]]:
    """Split the sources into those the mode can re-run and those it cannot, with the reason."""
    allowed: dict[str, str | None] = {}
    ok: list[Run] = []
    skipped: list[Skipped] = []
    for run in runs:
        if run.repo not in allowed:
            allowed[run.repo] = _repo_refusal(run.repo, settings)
        reason = allowed[run.repo] or _mode_refusal(run, mode)
        if reason is None:
            ok.append(run)
        else:
            skipped.append(Skipped(run.id, reason))
    return ok, skipped


def _repo_refusal(repo: str, settings: Settings) -> str | None:
    try:
        check_repo(repo, settings)
    except InvalidSpec as exc:
        return f"repository not allowed now: {exc.message}"
    return None


def _mode_refusal(run: Run, mode: CampaignMode) -> str | None:
    if not RunState(run.state).terminal:
        return f"still {run.state}: only ended runs can be sources"
    if mode == CampaignMode.FAILED_PHASES:
        if first_to_rerun(run) is None:
            return "nothing to re-run: every phase completed"
        if run.head_sha != run.base_sha and run.branch_sha != run.head_sha:
            return "its last completed commit never reached its result branch, so no worker can fetch it"
        if run.head_sha != run.base_sha and run.branch_pruned_at is not None:
            return "its result branch expired (result-branch retention), so its commits cannot be reused"
    if mode == CampaignMode.REPLAY and not any(p.attempts_used for p in run.phases):
        return "no recorded builder answer to replay: no phase was attempted"
    return None


def first_to_rerun(run: Run) -> Phase | None:
    """The first phase that did not complete (failed, skipped or cancelled), or None."""
    return next((p for p in run.phases if PhaseState(p.state) != PhaseState.COMPLETE), None)
