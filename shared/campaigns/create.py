"""Creating a campaign: its row, every child run with its phases, and every pair, in bulk.

A child is an ordinary run (`campaign_id`, `parent_run_id` = its source, `arm`, `sample`), so the
lease, fencing, outbox and recovery cover it like any other. The first `max_parallel_runs` children
are dispatched by the caller after commit (`claim_many`); the rest are `held` until `release` makes
room. Inserts are bulk statements: a 500-child campaign costs a handful of round trips.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from pydantic import ValidationError
from sqlalchemy import insert
from sqlalchemy.orm import Session

from shared.campaigns.sources import Skipped, eligible, first_to_rerun, select_sources
from shared.campaigns.spec import CampaignMode, CampaignSpec, Overrides, merge_config
from shared.errors import GitError, InvalidSpec
from shared.git import resolve_ref
from shared.keys import Caller
from shared.models import Campaign, CampaignPair, Phase, Run, utcnow
from shared.runs import new_run_columns
from shared.settings import Settings
from shared.specs import RunSpec
from shared.states import CampaignState, PairState, PhaseState

SOURCE_ARM = "A"


@dataclass
class Created:
    campaign_id: int
    children: int
    skipped: list[Skipped]
    dispatch: list[tuple[int, int]] = field(default_factory=list)
    """(run, phase) to enqueue once the transaction has committed."""


@dataclass(frozen=True)
class Child:
    source: Run
    arm: str
    sample: int
    spec: RunSpec
    base_sha: str


def create_campaign(
    session: Session, spec: CampaignSpec, settings: Settings, caller: Caller | None
) -> Created:
    """Store the campaign, its children and its pairs (not committed); InvalidSpec names the field."""
    sources, skipped = eligible(select_sources(session, spec.source, caller), spec.mode, settings)
    children, refused = _children(spec, sources)
    skipped += refused
    if not children:
        reasons = "; ".join(f"run {s.run_id}: {s.reason}" for s in skipped[:5])
        raise InvalidSpec("source", f"no source run can be re-run in mode {spec.mode}: {reasons}")
    if len(children) > settings.max_campaign_children:
        raise InvalidSpec("source", f"{len(children)} child runs; at most {settings.max_campaign_children}")
    campaign = _campaign_row(session, spec, caller)
    campaign.skipped = [{"run_id": s.run_id, "reason": s.reason} for s in skipped]
    ids = _insert_runs(session, campaign, spec, children)
    first_phase = _insert_phases(session, spec.mode, children, ids)
    _insert_pairs(session, campaign.id, spec, children, ids)
    live = ids if spec.max_parallel_runs is None else ids[: spec.max_parallel_runs]
    dispatch = [(run_id, first_phase[run_id]) for run_id in live]
    return Created(campaign.id, len(children), skipped, dispatch)


def _children(spec: CampaignSpec, sources: Sequence[Run]) -> tuple[list[Child], list[Skipped]]:
    arms = spec.arm_overrides()
    bases = _resolved_bases(spec, sources, arms)
    out: list[Child] = []
    refused: list[Skipped] = []
    for source in sources:
        try:
            made = {arm: _child_spec(spec, source, o) for arm, o in arms.items()}
        except (ValidationError, ValueError) as exc:
            refused.append(Skipped(source.id, f"the overrides make an invalid run: {_first_error(exc)}"))
            continue
        for sample in range(spec.repeats):
            for arm, run_spec in made.items():
                base = bases.get((source.repo, run_spec.base_ref), source.base_sha)
                out.append(Child(source, arm, sample, run_spec, base))
    return out, refused


def _resolved_bases(
    spec: CampaignSpec, sources: Sequence[Run], arms: dict[str, Overrides]
) -> dict[tuple[str, str], str]:
    """(repo, ref) -> sha for every ref a child starts from by name, resolved once per repository."""
    wanted: set[tuple[str, str]] = set()
    for source in sources:
        for o in arms.values():
            if o.base_ref is not None:
                wanted.add((source.repo, o.base_ref))
            elif not spec.pin_base_sha:
                wanted.add((source.repo, source.base_ref))
    out: dict[tuple[str, str], str] = {}
    for repo, ref in sorted(wanted):
        try:
            out[(repo, ref)] = resolve_ref(repo, ref)
        except GitError as exc:
            raise InvalidSpec("overrides.base_ref", f"cannot resolve {ref!r} in {repo}: {exc}") from exc
    return out


def _child_spec(spec: CampaignSpec, source: Run, overrides: Overrides) -> RunSpec:
    body = dict(source.spec)
    config = merge_config(dict(source.config), overrides.config, validate=False)
    if spec.mode == CampaignMode.REPLAY:
        config = {**config, "builder": "replay", "replay_of": source.id}
    body["config"] = config
    if overrides.base_ref is not None:
        body["base_ref"] = overrides.base_ref
    return RunSpec.model_validate(body)


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        return f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
    return str(exc)


def _campaign_row(session: Session, spec: CampaignSpec, caller: Caller | None) -> Campaign:
    campaign = Campaign(
        name=spec.name,
        owner=caller.owner if caller is not None else None,
        spec=spec.model_dump(mode="json"),
        mode=str(spec.mode),
        state=CampaignState.ACTIVE,
        max_parallel_runs=spec.max_parallel_runs,
        max_tokens=spec.max_tokens,
        max_usd=None if spec.max_usd is None else Decimal(str(spec.max_usd)),
        seed=spec.seed or 0,
        skipped=[],
        created_at=utcnow(),
    )
    session.add(campaign)
    session.flush()
    if spec.seed is None:
        campaign.seed = campaign.id
    return campaign


def _insert_runs(
    session: Session, campaign: Campaign, spec: CampaignSpec, children: list[Child]
) -> list[int]:
    now = utcnow()
    limit = spec.max_parallel_runs
    rows = [
        _run_row(c, campaign, spec.mode, now, held=limit is not None and i >= limit)
        for i, c in enumerate(children)
    ]
    stmt = insert(Run).returning(Run.id, sort_by_parameter_order=True)
    return list(session.scalars(stmt, rows))


def _run_row(child: Child, campaign: Campaign, mode: CampaignMode, now: Any, *, held: bool) -> dict[str, Any]:
    source, run_spec = child.source, child.spec
    head = child.base_sha
    if mode == CampaignMode.FAILED_PHASES:
        head = source.head_sha  # the commit of its last completed phase: reused, not rebuilt
    return {
        "name": source.name,
        "repo": source.repo,
        "base_ref": run_spec.base_ref,
        "base_sha": child.base_sha,
        "head_sha": head,
        "branch_sha": None,
        **new_run_columns(run_spec),
        "owner": campaign.owner,
        "campaign_id": campaign.id,
        "parent_run_id": source.id,
        "arm": child.arm,
        "sample": child.sample,
        "held": held,
        "created_at": now,
    }


def _insert_phases(
    session: Session, mode: CampaignMode, children: list[Child], ids: list[int]
) -> dict[int, int]:
    """Every child's phases; returns each child's first phase to run."""
    rows: list[dict[str, Any]] = []
    for child, run_id in zip(children, ids, strict=True):
        rows += _phase_rows(child, run_id, mode)
    stmt = insert(Phase).returning(Phase.id, Phase.run_id, Phase.state, sort_by_parameter_order=True)
    first: dict[int, int] = {}
    for phase_id, run_id, state in session.execute(stmt, rows):
        if state == PhaseState.QUEUED:
            first.setdefault(run_id, phase_id)
    return first


def _phase_rows(child: Child, run_id: int, mode: CampaignMode) -> list[dict[str, Any]]:
    rerun_from = 0
    if mode == CampaignMode.FAILED_PHASES:
        failed = first_to_rerun(child.source)
        assert failed is not None  # `eligible` skipped sources with nothing to re-run
        rerun_from = failed.index
    rows = []
    for i, phase in enumerate(child.spec.phases):
        reused = child.source.phases[i] if i < rerun_from else None
        rows.append(
            {
                "run_id": run_id,
                "index": i,
                "name": phase.name,
                "spec": phase.model_dump(mode="json"),
                "state": PhaseState.COMPLETE if reused else PhaseState.QUEUED,
                "commit_sha": reused.commit_sha if reused else None,
                "started_at": reused.started_at if reused else None,
                "finished_at": reused.finished_at if reused else None,
                "attempts_used": 0,
                "deliveries": 0,
            }
        )
    return rows


def _insert_pairs(
    session: Session, campaign_id: int, spec: CampaignSpec, children: list[Child], ids: list[int]
) -> None:
    by_key: dict[tuple[int, int], dict[str, int]] = {}
    for child, run_id in zip(children, ids, strict=True):
        by_key.setdefault((child.source.id, child.sample), {})[child.arm] = run_id
    rows = []
    for (source_id, sample), arms in by_key.items():
        a = arms["control"] if spec.arms is not None else source_id
        b = arms["treatment"] if spec.arms is not None else arms["B"]
        rows.append(
            {
                "campaign_id": campaign_id,
                "source_run_id": source_id,
                "sample": sample,
                "a_run_id": a,
                "b_run_id": b,
                "state": PairState.PENDING,
            }
        )
    session.execute(insert(CampaignPair), rows)
