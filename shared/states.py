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
    AWAITING_APPROVAL = "AWAITING_APPROVAL"
    """Paused: its change touches a path whose rule asks a person. No lease, no message, no worker slot;
    a decision (or the timeout) puts it back to QUEUED."""

    @property
    def terminal(self) -> bool:
        return self in PHASE_TERMINAL


class HostState(StrEnum):
    HEALTHY = "HEALTHY"
    SICK = "SICK"
    """Out of the queue after consecutive host faults; probing itself until it works again."""


class FailureKind(StrEnum):
    """Why a run ended DONE_FAILED, so a comparison never scores the fleet's faults as the model's."""

    MODEL = "MODEL"
    """The builder's changes did not pass (attempts used up, a fatal or skipped phase)."""
    BUDGET = "BUDGET"
    """The run's own token or USD cap stopped an LLM call: part of what the run was configured to do."""
    CAMPAIGN_CAP = "CAMPAIGN_CAP"
    """The campaign's shared cap stopped an LLM call: the run never had its chance."""
    INFRA = "INFRA"
    """The fleet failed it: deliveries used up (dead workers, provider outage, full disk), bad
    credentials, a result branch that cannot move."""


class CampaignState(StrEnum):
    ACTIVE = "ACTIVE"
    DONE = "DONE"
    CANCELLED = "CANCELLED"


class PairState(StrEnum):
    PENDING = "PENDING"
    """A side has not ended yet."""
    VALID = "VALID"
    INVALID = "INVALID"
    """Not comparable: another base commit, phase specs or model mapping, or a side cancelled."""
    INFRA_INVALID = "INFRA_INVALID"
    """A side was ended by the fleet, not by its builder: never counted as a model failure."""


class ApprovalState(StrEnum):
    """A governed change's approval. Lower case: it is what `GET /approvals?state=` takes."""

    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    AUTO_APPROVED = "auto_approved"
    """Every ruled path was `low` + `auto`: recorded, never paused."""
    CANCELLED = "cancelled"
    """Its run was cancelled while it waited."""


class PlanDraftState(StrEnum):
    """A plan draft's LLM pass. Lower case, like the approvals' states the API shows."""

    REFINING = "refining"
    """Its budget is reserved and the model call is (or was, if the API died) in flight."""
    DONE = "done"
    """The model's refinement was applied (some of its paths may have been dropped, with warnings)."""
    FAILED = "failed"
    """The call failed or its answer was unusable: the deterministic draft was returned; `error` says why."""


class AttemptOutcome(StrEnum):
    SUCCESS = "SUCCESS"
    BUILD_FAILED = "BUILD_FAILED"
    SCOPE_VIOLATION = "SCOPE_VIOLATION"
    VALIDATION_FAILED = "VALIDATION_FAILED"
    MISSING_DELIVERABLE = "MISSING_DELIVERABLE"
    INFRA_ERROR = "INFRA_ERROR"
    REJECTED = "REJECTED"
    """A reviewer (or the approval timeout) rejected the change; the reason goes into the next prompt."""


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
        {
            PhaseState.COMPLETE,
            PhaseState.FAILED,
            PhaseState.CANCELLED,
            PhaseState.QUEUED,
            PhaseState.SKIPPED,
            PhaseState.AWAITING_APPROVAL,
        }
    ),
    # A decision re-queues the phase (its worker resumes or retries); a cancelled run cancels it.
    PhaseState.AWAITING_APPROVAL: frozenset({PhaseState.QUEUED, PhaseState.CANCELLED}),
}


def check_run_move(current: RunState, new: RunState) -> None:
    if new not in _RUN_MOVES.get(current, frozenset()):
        raise InvalidTransition(f"run cannot go from {current} to {new}")


def check_phase_move(current: PhaseState, new: PhaseState) -> None:
    if new not in _PHASE_MOVES.get(current, frozenset()):
        raise InvalidTransition(f"phase cannot go from {current} to {new}")
