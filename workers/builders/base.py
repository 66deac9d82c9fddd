"""The Builder interface: given a phase and a worktree, produce a change."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from shared.specs import PhaseSpec

if TYPE_CHECKING:
    from workers.builders.tools import ToolLimits
    from workers.llm.client import LlmResponse
    from workers.llm.gateway import LlmGateway


@dataclass(frozen=True)
class BuildRequest:
    run_id: int
    phase_id: int
    phase: PhaseSpec
    attempt: int
    worktree: Path
    previous_failure: str | None
    timeout: float
    max_log_bytes: int
    advice: str | None = None
    """Concrete advice for this try (a failure-hardening hit or the Doctor's), if any."""
    model: str | None = None
    max_tokens: int | None = None
    context_budget_tokens: int = 0
    gateway: LlmGateway | None = None
    """Budgeted, recorded access to the LLM (LLM builders only)."""
    tools: ToolLimits | None = None
    """Offer the read-only tools within these bounds (`config.builder_tools`); None offers none."""
    recorded_output: str | None = None
    """What the replayed run's builder answered for this phase and attempt (replay builder only)."""


@dataclass(frozen=True)
class BuildResult:
    """What a builder produced. `patch` is for builders whose change the pipeline must apply itself;
    a builder that edits the worktree directly (script) leaves it None."""

    ok: bool
    output: str
    failure_reason: str | None = None
    patch: str | None = None
    llm: LlmResponse | None = None
    context: dict[str, Any] | None = None
    prompt_summary: str | None = None


class Builder(Protocol):
    name: str

    def build(self, request: BuildRequest) -> BuildResult: ...
