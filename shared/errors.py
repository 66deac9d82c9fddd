"""One error tree for the whole project. `api/` maps these to HTTP status codes; nothing else does."""

from __future__ import annotations


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


class InvalidTransition(AutopackError):
    """A state change the state machine does not allow."""


class ServiceUnavailable(AutopackError):
    """A dependency (database, broker, disk) cannot be reached or used; the message names it."""

    def __init__(self, service: str, detail: str) -> None:
        super().__init__(f"{service} unavailable: {detail}")
        self.service = service
        self.detail = detail


class DatabaseNotMigrated(AutopackError):
    """The database schema is behind the code."""


class LeaseLost(AutopackError):
    """This worker no longer holds the run's lease; it must not record anything."""


class GitError(AutopackError):
    """A git command failed; the message carries its stderr."""


class WorkspaceError(AutopackError):
    """A worktree or mirror could not be provisioned (disk full, repo gone)."""


class AuthError(AutopackError):
    """Missing or wrong API key."""
