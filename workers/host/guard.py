"""The guard: a thread in the worker's main process that takes a sick host out of the queue and back.

Every `GUARD_PERIOD_SECONDS` it reads the host's fault counter (health.py). Sick: it stops consuming
the phase queue (`cancel_consumer`, so Celery's heartbeat, events and control go on and the worker
stays visible), says why in the log and in the database (`/fleet`), and probes the host (probe.py) every
`host_probe_seconds`, doubling the wait after each failed probe up to ten times that. A passing probe
starts consuming again. The counter lives in a file, so a sick host that restarts stays out until a
probe passes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime

from shared import hosts
from shared.errors import HostFault
from shared.settings import Settings
from shared.states import HostState
from workers.host.health import HostHealth
from workers.host.probe import probe
from workers.workspace import WorkspaceManager

log = logging.getLogger(__name__)

GUARD_PERIOD_SECONDS = 1.0
"""How often the guard reads the fault counter: a sick host stops consuming within about this long."""

Switch = Callable[[bool], None]
"""consume(True) starts consuming the phase queue, consume(False) stops."""


class HostGuard:
    def __init__(self, settings: Settings, node: str, consume: Switch) -> None:
        self.settings = settings
        self.node = node
        self.consume = consume
        self.health = HostHealth(settings.workspace_dir, settings.host_fault_threshold)
        self.workspace = WorkspaceManager(settings.workspace_dir, settings.worktrees_per_repo)
        self.paused = False
        self._next_probe = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="autopack-host-guard", daemon=True)

    def start(self) -> None:
        self._report(HostState.HEALTHY)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(GUARD_PERIOD_SECONDS):
            try:
                self.check(time.monotonic())
            except Exception as exc:  # a DB outage must not kill the guard; next second tries again
                log.warning("host guard: %s", exc)

    def check(self, now: float) -> None:
        state = self.health.read()
        if not state.sick:
            if self.paused:  # the counter was reset by hand (or by another process's probe)
                self._resume("the fault counter was reset")
            return
        if not self.paused:
            self._pause(state.reason or "host faults")
        if now >= self._next_probe:
            self._probe(now)

    def _pause(self, reason: str) -> None:
        self.consume(False)
        self.paused = True
        self._next_probe = time.monotonic() + self.settings.host_probe_seconds
        state = self.health.read()
        log.error(
            "host %s is sick after %d host fault(s) in a row; stopped consuming phases: %s",
            self.node,
            state.faults,
            reason,
        )
        self._report(HostState.SICK, reason=reason)

    def _probe(self, now: float) -> None:
        try:
            probe(self.workspace, self.settings.min_free_disk_mb * 2**20)
        except HostFault as exc:
            state = self.health.probe_failed(str(exc))
            wait = self.settings.host_probe_seconds * 2 ** min(state.probes_failed, 3)
            self._next_probe = now + min(wait, self.settings.host_probe_seconds * 10)
            log.warning("host %s still sick, next probe in %.0f s: %s", self.node, wait, exc)
            self._report(HostState.SICK, reason=state.reason, probe_error=str(exc), probed=True)
            return
        self.health.recovered()
        self._resume("the host probe passed", probed=True)

    def _resume(self, why: str, probed: bool = False) -> None:
        self.consume(True)
        self.paused = False
        log.warning("host %s is healthy again (%s); consuming phases", self.node, why)
        self._report(HostState.HEALTHY, probed=probed)

    def _report(
        self,
        state: HostState,
        reason: str | None = None,
        probe_error: str | None = None,
        probed: bool = False,
    ) -> None:
        health = self.health.read()
        since = datetime.fromisoformat(health.since) if health.since and state == HostState.SICK else None
        try:
            hosts.report(
                self.settings.database_url,
                self.node,
                state,
                reason=reason,
                faults=health.faults,
                sick_since=since,
                probe_error=probe_error,
                probed=probed,
            )
        except Exception as exc:  # the log still says it; the next change writes the row again
            log.warning("host %s: recording its state failed: %s", self.node, exc)
