"""Telling a full disk from other failures: git and the OS word it several ways."""

from __future__ import annotations

import errno

_DISK_FULL_WORDS = ("No space left", "Out of diskspace", "Disk quota exceeded")


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC/EDQUOT raised here, or reported by a git child process in its stderr (git says both
    "No space left on device" and "write error. Out of diskspace")."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return any(word in str(exc) for word in _DISK_FULL_WORDS)


def reports_disk_full(output: str) -> bool:
    """A command's own output says one of its writes failed for lack of space."""
    return any(word in output for word in _DISK_FULL_WORDS)
