"""Run, phase and attempt states, and the one place their transitions are checked."""

from __future__ import annotations

from enum import StrEnum

from shared.errors import InvalidTransition


class RunState(StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    DONE_SUCCESS = "DONE_SUCCESS"
    DONE_FAILED = "DONE_FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in RUN_TERMINAL


class PhaseState(StrEnum):
    QUEUED = "QUEUED"
    EXECUTING = "EXECUTING"
    COMPLETE = "COMPLETE"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in PHASE_TERMINAL


class HostState(StrEnum):
    HEALTHY = "HEALTHY"
    SICK = "SICK"
    """Out of the queue after consecutive host faults; probing itself until it works again."""


class AttemptOutcome(StrEnum):
    SUCCESS = "SUCCESS"
    BUILD_FAILED = "BUILD_FAILED"
    SCOPE_VIOLATION = "SCOPE_VIOLATION"
    VALIDATION_FAILED = "VALIDATION_FAILED"
    MISSING_DELIVERABLE = "MISSING_DELIVERABLE"
    INFRA_ERROR = "INFRA_ERROR"


RUN_TERMINAL = frozenset({RunState.DONE_SUCCESS, RunState.DONE_FAILED, RunState.CANCELLED})
PHASE_TERMINAL = frozenset({PhaseState.COMPLETE, PhaseState.FAILED, PhaseState.SKIPPED, PhaseState.CANCELLED})

_RUN_MOVES: dict[RunState, frozenset[RunState]] = {
    RunState.QUEUED: frozenset({RunState.RUNNING, RunState.CANCELLED, RunState.DONE_FAILED}),
    RunState.RUNNING: frozenset({RunState.DONE_SUCCESS, RunState.DONE_FAILED, RunState.CANCELLED}),
}
_PHASE_MOVES: dict[PhaseState, frozenset[PhaseState]] = {
    PhaseState.QUEUED: frozenset(
        {PhaseState.EXECUTING, PhaseState.SKIPPED, PhaseState.CANCELLED, PhaseState.FAILED}
    ),
    # EXECUTING -> QUEUED hands a phase back (worker draining, disk full, LLM provider down).
    # EXECUTING -> SKIPPED when the Doctor decides the phase should be skipped.
    PhaseState.EXECUTING: frozenset(
        {PhaseState.COMPLETE, PhaseState.FAILED, PhaseState.CANCELLED, PhaseState.QUEUED, PhaseState.SKIPPED}
    ),
}


def check_run_move(current: RunState, new: RunState) -> None:
    if new not in _RUN_MOVES.get(current, frozenset()):
        raise InvalidTransition(f"run cannot go from {current} to {new}")


def check_phase_move(current: PhaseState, new: PhaseState) -> None:
    if new not in _PHASE_MOVES.get(current, frozenset()):
        raise InvalidTransition(f"phase cannot go from {current} to {new}")
