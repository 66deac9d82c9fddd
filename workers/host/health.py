"""The host's fault counter: a small JSON file in the workspace, shared by every process of the worker.

Protocol: an execution that hands a phase back for a host fault calls `fault()`; one that got past
provisioning calls `ok()`. After `threshold` consecutive faults the state turns sick: executions
hand their phases on without touching them, and the worker's guard stops consuming and probes until
the host works again (`recovered()`). The file outlives the worker, so a restarted sick host stays out.
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import IO

from shared.models import utcnow
from workers.workspace.locks import flock


@dataclass(frozen=True)
class HostState:
    faults: int = 0
    """Host faults in a row, since the last execution that got past provisioning."""
    sick: bool = False
    reason: str | None = None
    """The last fault's words."""
    since: str | None = None
    """When the host turned sick (ISO 8601, UTC)."""
    probes_failed: int = 0
    """Probes failed since it turned sick (the probe interval backs off with this)."""


class HostHealth:
    def __init__(self, workspace_dir: Path, threshold: int) -> None:
        self.path = workspace_dir / "host-health.json"
        self.threshold = threshold

    def read(self) -> HostState:
        try:
            return HostState(**json.loads(self.path.read_text()))
        except (OSError, ValueError, TypeError):
            return HostState()

    def fault(self, reason: str) -> HostState:
        """Count a host fault; returns the new state (sick once `threshold` faults came in a row; a
        threshold of 0 never turns sick: an embedded fleet has no other host to hand phases to)."""
        with self._locked():
            state = self.read()
            faults = state.faults + 1
            sick = state.sick or 0 < self.threshold <= faults
            since = state.since if state.sick else (_now() if sick else None)
            new = HostState(faults, sick, reason[:1000], since, state.probes_failed)
            self._write(new)
            return new

    def ok(self) -> None:
        """An execution got past provisioning: the run of faults is over. On the hot path: a read, and
        a write only when there were faults."""
        if not self.read().faults:
            return
        with self._locked():
            if not self.read().sick:  # a sick host recovers by its probe, not by a lucky execution
                self._write(HostState())

    def probe_failed(self, reason: str) -> HostState:
        with self._locked():
            state = self.read()
            new = HostState(state.faults, True, reason[:1000], state.since or _now(), state.probes_failed + 1)
            self._write(new)
            return new

    def recovered(self) -> None:
        with self._locked():
            self._write(HostState())

    def _locked(self) -> AbstractContextManager[IO[str] | None]:
        return flock(self.path.with_suffix(".lock"))

    def _write(self, state: HostState) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(state)))
        tmp.replace(self.path)  # readers never see half a file


def _now() -> str:
    return datetime.isoformat(utcnow())
