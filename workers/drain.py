"""Draining: a worker told to stop lets its phases finish for `drain_seconds`, then hands them back.

Celery tells only the worker's main process that it is stopping (`worker_shutting_down`); the phases
run in its pool children. So the main process leaves a marker file named by its pid, holding the
deadline, and a child looks for its parent's marker (prefork) or its own (solo pool). Checking is a
`stat` of two paths, cheap enough for the half-second poll of a running command.

A marker outlives a killed worker, and pids are reused: a worker clears its own pid's marker when it
starts, before any child exists.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

_directory: Path | None = None


def configure(directory: Path) -> None:
    """Main process, before forking: where markers live. Also forgets a stale marker of this pid."""
    global _directory
    _directory = directory
    directory.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        _marker(os.getpid()).unlink()


def begin(seconds: float) -> None:
    """Main process: stopping now; running phases must finish or be handed back within `seconds`."""
    if _directory is None:
        return
    tmp = _marker(os.getpid()).with_suffix(".tmp")
    tmp.write_text(repr(time.time() + seconds))
    tmp.replace(_marker(os.getpid()))  # a reader sees no marker or a whole one


def deadline() -> float | None:
    """The drain deadline (epoch seconds) of this process's worker, or None while it is not stopping."""
    if _directory is None:
        return None
    for pid in (os.getppid(), os.getpid()):
        try:
            return float(_marker(pid).read_text())
        except (FileNotFoundError, ValueError):
            continue
    return None


def requested() -> bool:
    """The worker is stopping: start no new attempt."""
    return deadline() is not None


def overdue() -> bool:
    """The drain window is over: stop what runs and hand the phase back."""
    end = deadline()
    return end is not None and time.time() >= end


def _marker(pid: int) -> Path:
    assert _directory is not None
    return _directory / f"{pid}.drain"
