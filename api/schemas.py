"""Response bodies of the HTTP API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import Path
from pydantic import BaseModel, ConfigDict

from shared.campaigns.progress import CampaignProgress
from shared.models import Phase, Run

MAX_ID = 2**31 - 1
"""Ids are 32-bit integers in the database; a bigger one is a 422, never a driver error."""

RunId = Annotated[int, Path(ge=1, le=MAX_ID)]


class ErrorOut(BaseModel):
    """Every error but 422: what went wrong, in words."""

    detail: str


ERRORS: dict[int, str] = {
    400: "the body is not UTF-8 JSON",
    401: "missing or invalid X-API-Key",
    403: "the route needs an admin key",
    404: "no such run or campaign, or another owner's",
    413: "request body over AUTOPACK_MAX_BODY_BYTES",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these error codes, so clients (and schemathesis) know them."""
    return {code: {"model": ErrorOut, "description": ERRORS[code]} for code in codes}


class AttemptOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    number: int
    outcome: str
    worker: str
    started_at: datetime
    finished_at: datetime
    failure_reason: str | None
    changed_paths: list[Any]
    commit_sha: str | None


class PhaseOut(BaseModel):
    id: int
    index: int
    name: str
    state: str
    attempts: int
    deliveries: int
    started_at: datetime | None
    finished_at: datetime | None
    commit_sha: str | None
    failure_reason: str | None
    attempt_log: list[AttemptOut] | None = None

    @classmethod
    def of(cls, phase: Phase, with_attempts: bool) -> PhaseOut:
        log = [AttemptOut.model_validate(a) for a in phase.attempts] if with_attempts else None
        return cls(
            id=phase.id,
            index=phase.index,
            name=phase.name,
            state=phase.state,
            attempts=phase.attempts_used,
            deliveries=phase.deliveries,
            started_at=phase.started_at,
            finished_at=phase.finished_at,
            commit_sha=phase.commit_sha,
            failure_reason=phase.failure_reason,
            attempt_log=log,
        )


class RunOut(BaseModel):
    id: int
    name: str | None
    repo: str
    base_ref: str
    base_sha: str
    head_sha: str
    state: str
    config: dict[str, Any]
    failure_reason: str | None
    failure_kind: str | None
    """DONE_FAILED only: MODEL, BUDGET, CAMPAIGN_CAP or INFRA (the fleet's fault, not the builder's)."""
    cancel_requested: bool
    campaign_id: int | None
    parent_run_id: int | None
    arm: str | None
    sample: int | None
    result_branch: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    phases: list[PhaseOut]

    @classmethod
    def of(cls, run: Run, with_attempts: bool = False) -> RunOut:
        return cls(
            id=run.id,
            name=run.name,
            repo=run.repo,
            base_ref=run.base_ref,
            base_sha=run.base_sha,
            head_sha=run.head_sha,
            state=run.state,
            config=run.config,
            failure_reason=run.failure_reason,
            failure_kind=run.failure_kind,
            cancel_requested=run.cancel_requested,
            campaign_id=run.campaign_id,
            parent_run_id=run.parent_run_id,
            arm=run.arm,
            sample=run.sample,
            result_branch=run.result_branch,
            created_at=run.created_at,
            started_at=run.started_at,
            finished_at=run.finished_at,
            phases=[PhaseOut.of(p, with_attempts) for p in run.phases],
        )


class CampaignCreated(BaseModel):
    id: int
    children: int
    """Child runs created (sources x arms x repeats)."""
    dispatched: int
    """Children started at once; the rest wait for room under `max_parallel_runs`."""
    skipped_sources: list[dict[str, Any]]
    """Source runs left out, each with the reason."""


class CampaignPage(BaseModel):
    items: list[CampaignProgress]
    next_cursor: int | None


class RunPage(BaseModel):
    items: list[RunOut]
    next_cursor: int | None


class Health(BaseModel):
    service: str
    version: str
    mode: str
    database: str
    broker: str
    sandbox: str
    """How phase commands are isolated: `bwrap (…)`, or `none (…)` when the operator turned it off."""
