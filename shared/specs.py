"""The run spec users submit (HTTP JSON or CLI YAML), validated before anything is stored."""

from __future__ import annotations

import hashlib
import json
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from shared.approvals.rules import PathRule
from shared.llm_catalog import MODEL_OUTPUT_LIMITS, has_price, output_limit


def _repo_relative(path: str) -> str:
    """Scope-like paths are repo-relative, POSIX, without `..`, and never inside `.git`."""
    if not path or path.strip() != path:
        raise ValueError("must be a non-empty path without surrounding spaces")
    if "\\" in path or "\x00" in path:
        raise ValueError("must use '/' separators and no NUL bytes")
    pure = PurePosixPath(path)
    if pure.is_absolute():
        raise ValueError("must be relative to the repository root")
    if ".." in pure.parts:
        raise ValueError("must not contain '..'")
    if pure.parts and pure.parts[0].lower() == ".git":
        raise ValueError("must not point into .git")
    return path


RepoPath = Annotated[str, AfterValidator(_repo_relative)]
Command = Annotated[str, Field(min_length=1, max_length=4000)]


class ModelConfig(BaseModel):
    """Which model plays each role. The builder escalates along its chain after repeated failures."""

    model_config = ConfigDict(extra="forbid")

    builder: list[str] = Field(
        default_factory=lambda: ["claude-haiku-4-5", "claude-sonnet-4-6", "claude-opus-4-6"], min_length=1
    )
    """Escalation chain of builder models, cheapest first."""

    doctor: str = "claude-sonnet-4-6"
    """Model that diagnoses failures no deterministic pattern explains."""

    escalate_after_failures: int = Field(default=2, ge=1, le=10)
    """Failed attempts on one model before the builder moves to the next model of the chain."""


class RunConfig(BaseModel):
    """How a run executes. Unknown keys are rejected so a typo never silently changes behaviour."""

    model_config = ConfigDict(extra="forbid")

    builder: Literal["script", "anthropic", "replay"] = "script"
    """Which Builder produces each phase's change."""

    max_attempts: int = Field(default=2, ge=1, le=10)
    """Tries per phase before the phase (and the run) fails."""

    models: ModelConfig = Field(default_factory=ModelConfig)
    """Models per role (LLM builders only)."""

    max_output_tokens: int = Field(default=4096, ge=256, le=128000)
    """Selected output budget of a builder call (escalated once on truncation)."""

    context_budget_tokens: int = Field(default=20000, ge=0, le=1_000_000)
    """Estimated tokens of repository context a builder prompt may carry."""

    builder_tools: bool = False
    """Let the `anthropic` builder call read-only tools (read a line range, grep, list a directory) on the
    files of its phase's scope and read-only context before it answers. Each model call of that loop is
    an ordinary, budgeted usage row."""

    tool_max_calls: int = Field(default=12, ge=1, le=100)
    """Tool calls one builder attempt may make; past it every further call gets an error result."""

    tool_max_bytes: int = Field(default=65536, ge=1024, le=4 * 1024 * 1024)
    """Bytes of tool results one builder attempt may receive in total (each result is cut to fit)."""

    tool_max_seconds: float = Field(default=30.0, gt=0, le=600)
    """Wall-clock seconds one builder attempt may spend running tools (model calls not included)."""

    max_tokens: int | None = Field(default=None, ge=1, le=10**12)
    """Cap on LLM tokens (input + output) this run may spend; unset = no cap. Bounded so the budget
    ledger's SQL comparisons never overflow."""

    max_usd: float | None = Field(default=None, gt=0, le=1_000_000)
    """Cap on LLM cost in USD this run may spend; unset = no cap."""

    doctor: bool = True
    """Ask the Doctor about failures no deterministic pattern explains."""

    replay_of: int | None = Field(default=None, ge=1, le=2**31 - 1)
    """For `builder: replay`: the run whose recorded builder outputs are re-emitted."""

    approval_rules: list[PathRule] = Field(default_factory=list, max_length=200)
    """Path rules of this run, checked before the fleet's (`AUTOPACK_APPROVAL_RULES`): a change to a
    path whose rule says `ask` pauses the phase until a person decides; `deny` fails the attempt."""

    approval_timeout_seconds: float | None = Field(default=None, gt=0, le=30 * 86400)
    """How long this run's approvals wait; unset = the fleet's `AUTOPACK_APPROVAL_TIMEOUT_SECONDS`."""

    approval_timeout_action: Literal["reject", "approve"] | None = None
    """What this run's unanswered approvals become; unset = the fleet's setting."""

    @model_validator(mode="after")
    def _models_fit_the_catalog(self) -> RunConfig:
        """Refuse at submit what a worker could only fail on later: an unknown model (a typo, or a model
        the fleet cannot budget), an output budget the model rejects, a USD cap on an unknown price."""
        for field, model in self._models():
            if output_limit(model) is None:
                families = ", ".join(sorted(MODEL_OUTPUT_LIMITS))
                raise ValueError(f"{field}: unknown model {model!r}; known model families: {families}")
        if self.builder != "anthropic":
            return self  # script and replay runs call no model for their changes
        for i, model in enumerate(self.models.builder):
            limit = output_limit(model)
            if limit is not None and self.max_output_tokens > limit:
                raise ValueError(
                    f"max_output_tokens: {self.max_output_tokens} is above the {limit} output tokens "
                    f"{model!r} (models.builder.{i}) accepts"
                )
        if self.max_usd is not None:
            for field, model in self._models():
                if not has_price(model):
                    raise ValueError(
                        f"{field}: {model!r} has no known price, so the max_usd cap cannot be enforced "
                        "on it; choose a priced model or drop max_usd"
                    )
        return self

    def _models(self) -> list[tuple[str, str]]:
        """(field, model) of every model this run may call."""
        used = [(f"models.builder.{i}", m) for i, m in enumerate(self.models.builder)]
        return used + ([("models.doctor", self.models.doctor)] if self.doctor else [])


class PhaseSpec(BaseModel):
    """One coding goal with the files it may change and how to tell it worked."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    goal: str = Field(default="", max_length=20000)
    scope: list[RepoPath] = Field(min_length=1)
    read_only_context: list[RepoPath] = Field(default_factory=list)
    deliverables: list[RepoPath] = Field(default_factory=list)
    command: Command | None = None
    validation: list[Command] = Field(default_factory=list)
    protected_paths: list[RepoPath] = Field(default_factory=list)
    allow_deletions: bool = False
    """Let an LLM change delete more files than the `max_deletions` setting allows."""
    network: bool = False
    """The phase's commands need the network (package installs, a service). Honoured only where the
    operator set `AUTOPACK_PHASE_NETWORK=allow`; otherwise their box has no network at all."""


class RunSpec(BaseModel):
    """A run as submitted: repository, base ref, config, and ordered phases."""

    model_config = ConfigDict(extra="forbid")

    repo: str = Field(min_length=1, max_length=2000)
    base_ref: str = Field(default="main", min_length=1, max_length=255)
    name: str | None = Field(default=None, max_length=200)
    config: RunConfig = Field(default_factory=RunConfig)
    phases: list[PhaseSpec] = Field(min_length=1, max_length=200)

    @model_validator(mode="after")
    def _phases_fit_builder(self) -> RunSpec:
        names = [p.name for p in self.phases]
        if len(set(names)) != len(names):
            raise ValueError("phases: names must be unique within a run")
        if self.config.builder == "script":
            for i, phase in enumerate(self.phases):
                if phase.command is None:
                    raise ValueError(f"phases.{i}.command: the script builder needs a command")
        if self.config.builder == "replay" and self.config.replay_of is None:
            raise ValueError("config.replay_of: the replay builder needs the id of the run to replay")
        return self

    def spec_hash(self) -> str:
        """Identity of what the run asks for (not how), for pairing replayed runs."""
        return spec_hash_of(self.model_dump(mode="json"))


def spec_hash_of(dumped: dict[str, Any]) -> str:
    """`RunSpec.spec_hash` of a spec already dumped in JSON mode (`POST /runs` dumps it once)."""
    body = {key: value for key, value in dumped.items() if key not in ("config", "name")}
    # Runs submitted before `network` existed keep their hash.
    body["phases"] = [{k: v for k, v in p.items() if k != "network" or v} for p in dumped["phases"]]
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
