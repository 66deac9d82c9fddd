"""One error tree for the whole project. `api/` maps these to HTTP status codes; nothing else does."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal


class AutopackError(Exception):
    """Base of every error the project raises on purpose."""


class InvalidSpec(AutopackError):
    """A run spec is well-formed JSON but cannot be executed (repo unreadable, ref does not resolve)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class NotFound(AutopackError):
    """A run, phase or key that does not exist."""


class Conflict(AutopackError):
    """The request lost a race or no longer applies (an approval already decided): HTTP 409."""


class InvalidTransition(AutopackError):
    """A state change the state machine does not allow."""


class ServiceUnavailable(AutopackError):
    """A dependency (database, broker, disk) cannot be reached or used; the message names it."""

    def __init__(self, service: str, detail: str) -> None:
        super().__init__(f"{service} unavailable: {detail}")
        self.service = service
        self.detail = detail


class HostFault(ServiceUnavailable):
    """This host cannot run phases right now: its disk, its git state, its mirror or its network to
    the origin failed. Not the phase's fault: the phase goes back to the queue with no attempt spent."""

    def __init__(self, detail: str, service: str = "worker host") -> None:
        super().__init__(service, detail)


class SandboxFailed(HostFault):
    """The sandbox did not start for a command (bwrap reported no child): the host's fault."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail, "sandbox")


class DiskFull(HostFault):
    """The worker's workspace disk is (nearly) full."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail, "workspace disk")


class DatabaseNotMigrated(AutopackError):
    """The database schema is behind the code."""


class LeaseLost(AutopackError):
    """This worker no longer holds the run's lease; it must not record anything."""


class Drained(AutopackError):
    """The worker is stopping and the drain window is over: the phase goes back to the queue."""


class GitError(AutopackError):
    """A git command failed; the message carries its stderr."""


class BranchConflict(GitError):
    """The origin refused to move a run branch forward: it holds commits the run's head does not
    descend from (a holder that was taken over pushing late, or another database's run of that id)."""


class WorkspaceError(AutopackError):
    """A worktree or mirror could not be provisioned (disk full, repo gone)."""


class PatchParseError(AutopackError):
    """A builder's answer is not a change that applies; `reason` says why, for the next attempt's prompt."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RefineError(AutopackError):
    """A model's answer to the plan normalizer's LLM pass cannot be used; `reason` says why (it becomes
    the draft's warning, and the deterministic draft is returned)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class AuthError(AutopackError):
    """Missing or wrong API key."""


# LLM providers

InfraKind = Literal["rate_limited", "overloaded", "server_error", "timeout", "connection"]


@dataclass(frozen=True)
class InfraFailure:
    """One failed try. `waited_seconds` is the sleep that followed it (0 for the last, unretried one)."""

    kind: InfraKind
    status: int | None
    waited_seconds: float
    message: str
    request_id: str | None = None
    retry_after: float | None = None
    """The provider's `retry-after` in seconds, as sent (before capping), if it sent one."""


class LlmError(AutopackError):
    """An LLM call failed in a way none of the subclasses describe (e.g. an unreadable answer)."""


class LlmAuthError(LlmError):
    """The provider refused our credentials (401/403). Never retried: another try cannot succeed."""

    def __init__(self, status: int, message: str, request_id: str | None) -> None:
        super().__init__(f"LLM provider refused the credentials ({status}): {message}")
        self.status = status
        self.request_id = request_id


class LlmRequestError(LlmError):
    """The provider rejected the request itself (a 4xx other than 401/403/429). Never retried."""

    def __init__(self, status: int, error_type: str | None, message: str, request_id: str | None) -> None:
        super().__init__(f"LLM provider rejected the request ({status} {error_type or 'error'}): {message}")
        self.status = status
        self.error_type = error_type
        self.request_id = request_id


class LlmInfraError(LlmError):
    """Every try failed for infrastructure reasons; `failures` lists each one, in order."""

    def __init__(self, failures: Sequence[InfraFailure]) -> None:
        self.failures = tuple(failures)
        last = self.failures[-1]
        super().__init__(
            f"LLM call failed after {len(self.failures)} tries; last: {last.kind} "
            f"(status {last.status}): {last.message}"
        )


class SandboxUnavailable(AutopackError):
    """The worker cannot create the sandbox its phase commands must run in; the message says what to
    install or allow. The worker refuses to start rather than run repository code unboxed."""
