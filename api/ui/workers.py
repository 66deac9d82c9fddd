"""Slow views the dashboard shows without waiting for them: each is refreshed in a background thread
when a page asks for it and it is older than its period, and the page shows the last value and its
age. Celery `inspect` waits its whole timeout (a second); the fleet record reads every live run."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from celery import Celery

from api.routes.fleet import workers_or_error
from shared.db import session_factory
from shared.fleet import FleetRecord, WorkerView, fleet_record
from shared.settings import Settings

T = TypeVar("T")


@dataclass
class Refreshed(Generic[T]):
    """The last value of `compute`, its error, and when it was taken."""

    compute: Callable[[], tuple[T, str | None]]
    period: float
    value: T | None = None
    error: str | None = "not asked yet"
    at: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _busy: bool = False

    def get(self) -> tuple[T | None, str | None, float | None]:
        """(value, error, age in seconds; None before the first answer); refreshes in the background."""
        with self._lock:
            start = time.monotonic() - self.at > self.period and not self._busy
            if start:
                self._busy = True
        if start:
            threading.Thread(target=self._refresh, name="autopack-ui-refresh", daemon=True).start()
        return self.value, self.error, (time.monotonic() - self.at if self.at else None)

    def _refresh(self) -> None:
        value: T | None
        try:
            value, error = self.compute()
        except Exception as exc:  # an outage: keep the old value, say why
            value, error = self.value, (str(exc).splitlines() or [type(exc).__name__])[0][:300]
        with self._lock:
            self.value, self.error, self.at, self._busy = value, error, time.monotonic(), False


def worker_view(celery: Celery, settings: Settings) -> Refreshed[list[WorkerView]]:
    return Refreshed(lambda: workers_or_error(celery, settings), period=10.0)


def fleet_view(settings: Settings) -> Refreshed[FleetRecord]:
    def compute() -> tuple[FleetRecord, str | None]:
        with session_factory(settings.database_url)() as session:
            return fleet_record(session, redispatch_after=settings.redispatch_after_seconds), None

    return Refreshed(compute, period=5.0)
