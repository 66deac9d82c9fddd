"""The Builder interface: given a phase and a worktree, produce a change."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from shared.specs import PhaseSpec


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


@dataclass(frozen=True)
class BuildResult:
    """What a builder produced. `patch` is for builders whose change the pipeline must apply itself;
    a builder that edits the worktree directly (script) leaves it None."""

    ok: bool
    output: str
    failure_reason: str | None = None
    patch: str | None = None


class Builder(Protocol):
    name: str

    def build(self, request: BuildRequest) -> BuildResult: ...
