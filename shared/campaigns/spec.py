"""What a user submits to start a campaign (`POST /campaigns`), validated before anything is stored."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.specs import RunConfig
from shared.states import RunState

MAX_ID = 2**31 - 1


class CampaignMode(StrEnum):
    RERUN = "rerun"
    """Every phase again, from the source's base commit."""
    FAILED_PHASES = "failed_phases"
    """From the source's last completed commit: its earlier phases' commits are reused as they are,
    and only the first phase that did not complete and those after it run again."""
    REPLAY = "replay"
    """The `replay` builder: the source's recorded answers re-validated under the new code or settings;
    no LLM call, no spend."""


class RunFilter(BaseModel):
    """Which earlier runs to take, newest first; every given condition must hold."""

    model_config = ConfigDict(extra="forbid")

    states: list[RunState] = Field(default_factory=lambda: [RunState.DONE_FAILED, RunState.DONE_SUCCESS])
    """Run states to take (only ended runs can be sources)."""
    repo: str | None = Field(default=None, max_length=2000)
    """Exactly this repository (as stored: an absolute path or a URL)."""
    name_prefix: str | None = Field(default=None, max_length=200)
    """Run names starting with this."""
    created_since: datetime | None = None
    created_until: datetime | None = None
    campaign_id: int | None = Field(default=None, ge=1, le=MAX_ID)
    """The children of another campaign."""
    limit: int = Field(default=500, ge=1, le=10_000)
    """At most this many runs (newest first)."""


class Source(BaseModel):
    """The source runs: listed by id, or chosen by a filter."""

    model_config = ConfigDict(extra="forbid")

    run_ids: list[int] | None = Field(default=None, min_length=1, max_length=10_000)
    filter: RunFilter | None = None

    @model_validator(mode="after")
    def _one_of(self) -> Source:
        if (self.run_ids is None) == (self.filter is None):
            raise ValueError("give exactly one of run_ids or filter")
        for run_id in self.run_ids or []:
            if not 1 <= run_id <= MAX_ID:
                raise ValueError(f"run_ids: {run_id} is not a run id")
        return self


class Overrides(BaseModel):
    """What a re-run changes: a partial run `config` (merged into the source's) and the base ref."""

    model_config = ConfigDict(extra="forbid")

    config: dict[str, Any] = Field(default_factory=dict)
    """Keys of a run `config` (e.g. `{"models": {"builder": ["claude-sonnet-4-6"]}}`); nested objects
    merge, anything else replaces."""
    base_ref: str | None = Field(default=None, min_length=1, max_length=255)
    """Start from this ref of each source's repository (resolved once per repository at creation)
    instead of the source's base commit."""

    @model_validator(mode="after")
    def _config_is_valid(self) -> Overrides:
        merge_config(RunConfig().model_dump(mode="json"), self.config, validate=True)
        return self

    @property
    def changes_models(self) -> bool:
        return "models" in self.config


class Arms(BaseModel):
    """Re-run both arms now, so time and code drift cancel; `overrides` apply to both, then each arm's."""

    model_config = ConfigDict(extra="forbid")

    control: Overrides = Field(default_factory=Overrides)
    treatment: Overrides


class CampaignSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, max_length=200)
    source: Source
    mode: CampaignMode = CampaignMode.RERUN
    overrides: Overrides = Field(default_factory=Overrides)
    """Applied to every child (both arms, when `arms` is given)."""
    arms: Arms | None = None
    """Absent: arm A is the source runs as recorded, arm B the re-runs."""
    repeats: int = Field(default=1, ge=1, le=20)
    """Samples per source and arm, for builders that answer differently each time; the report clusters
    its standard errors by source run."""
    pin_base_sha: bool = True
    """Children start from the source's recorded base commit. False: from its base ref as it is now
    (then a pair whose base moved is reported invalid). `overrides.base_ref` wins over both."""
    max_parallel_runs: int | None = Field(default=None, ge=1, le=10_000)
    """Most children running (or queued on the broker) at once; the rest wait in the database."""
    max_tokens: int | None = Field(default=None, ge=1, le=10**12)
    """Cap on LLM tokens over all children together."""
    max_usd: float | None = Field(default=None, gt=0, le=1_000_000)
    """Cap on LLM cost in USD over all children together."""
    min_valid_pairs: int = Field(default=10, ge=1, le=100_000)
    """Below this many valid pairs the report gives counts but no delta."""
    seed: int | None = Field(default=None, ge=0, le=2**62)
    """Seed of the report's bootstrap; default: the campaign id."""

    def arm_overrides(self) -> dict[str, Overrides]:
        """The children's arms and what each changes (campaign overrides first, then the arm's)."""
        if self.arms is None:
            return {"B": self.overrides}
        return {
            "control": combine(self.overrides, self.arms.control),
            "treatment": combine(self.overrides, self.arms.treatment),
        }

    @property
    def overrides_base_ref(self) -> bool:
        return any(o.base_ref is not None for o in self.arm_overrides().values())

    @property
    def overrides_models(self) -> bool:
        return any(o.changes_models for o in self.arm_overrides().values())


def combine(first: Overrides, then: Overrides) -> Overrides:
    return Overrides(
        config=merge_config(first.config, then.config, validate=False),
        base_ref=then.base_ref or first.base_ref,
    )


def merge_config(base: dict[str, Any], changes: dict[str, Any], *, validate: bool) -> dict[str, Any]:
    """`base` with `changes` merged in (nested objects merge); with `validate`, checked as a RunConfig."""
    out = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_config(out[key], value, validate=False)
        else:
            out[key] = value
    if validate:
        RunConfig.model_validate(out)
    return out
