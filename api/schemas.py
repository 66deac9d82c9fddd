"""Response bodies of the HTTP API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import Path
from pydantic import BaseModel, ConfigDict

from shared.campaigns.progress import CampaignProgress
from shared.models import Attempt, Phase, Run, result_branch
from shared.run_insert import StoredRun

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
    404: "no such run, phase or campaign, or another owner's",
    409: "the request lost a race or no longer applies (an approval already decided)",
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


class AttemptDetail(AttemptOut):
    """One attempt with everything it produced: what `autopack logs` prints."""

    phase_id: int
    phase_index: int
    phase_name: str
    builder_output: str | None
    """The builder's captured output (cut at AUTOPACK_MAX_LOG_BYTES, the cut said)."""
    patch: str | None
    """The diff this attempt committed (or tried to)."""
    validation_output: str | None
    model: str | None
    max_tokens: int | None
    prompt_summary: str | None
    mitigation: dict[str, Any] | None
    """Failure hardening's match and advice, when a known failure pattern was recognised."""
    doctor: dict[str, Any] | None
    """The Doctor's diagnosis and advice (or why it was not asked)."""
    infra_failures: list[Any]

    @classmethod
    def of(cls, phase: Phase, attempt: Attempt) -> AttemptDetail:
        base = AttemptOut.model_validate(attempt).model_dump()
        return cls(
            **base,
            phase_id=phase.id,
            phase_index=phase.index,
            phase_name=phase.name,
            builder_output=attempt.builder_output,
            patch=attempt.patch,
            validation_output=attempt.validation_output,
            model=attempt.model,
            max_tokens=attempt.max_tokens,
            prompt_summary=attempt.prompt_summary,
            mitigation=attempt.mitigation,
            doctor=attempt.doctor,
            infra_failures=attempt.infra_failures,
        )


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

    @classmethod
    def stored(cls, values: dict[str, Any]) -> PhaseOut:
        """A phase just stored, from the values written (`shared.run_insert.StoredRun`)."""
        return cls(
            id=values["id"],
            index=values["index"],
            name=values["name"],
            state=values["state"],
            attempts=values["attempts_used"],
            deliveries=values["deliveries"],
            started_at=values["started_at"],
            finished_at=values["finished_at"],
            commit_sha=values["commit_sha"],
            failure_reason=values["failure_reason"],
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

    @classmethod
    def stored(cls, run: StoredRun) -> RunOut:
        """A run just stored, from the values written: what `of` would say of it read back, without
        loading it (tests/test_runs_store.py holds the two equal)."""
        fields = {name: run.values[name] for name in cls.model_fields if name in run.values}
        return cls(
            **fields,
            result_branch=result_branch(run.id),
            phases=[PhaseOut.stored(p) for p in run.phase_values],
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
