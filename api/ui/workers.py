"""Celery's view of the workers for the dashboard, refreshed in the background: `inspect` waits its
whole timeout (a second), which no page should pay; a page shows the last answer and its age."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from celery import Celery

from api.routes.fleet import workers_or_error
from shared.fleet import WorkerView
from shared.settings import Settings

REFRESH_SECONDS = 10.0


@dataclass
class WorkerCache:
    celery: Celery
    settings: Settings
    workers: list[WorkerView] = field(default_factory=list)
    error: str | None = "not asked yet"
    at: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _busy: bool = False

    def get(self) -> tuple[list[WorkerView], str | None, float | None]:
        """The last answer, its error and its age in seconds (None before the first); asks again in the
        background when it is older than REFRESH_SECONDS."""
        with self._lock:
            stale = time.monotonic() - self.at > REFRESH_SECONDS
            start = stale and not self._busy
            if start:
                self._busy = True
        if start:
            threading.Thread(target=self._refresh, name="autopack-ui-inspect", daemon=True).start()
        age = time.monotonic() - self.at if self.at else None
        return self.workers, self.error, age

    def _refresh(self) -> None:
        try:
            workers, error = workers_or_error(self.celery, self.settings)
        except Exception as exc:  # a broker outage: keep the old list, say why
            workers, error = self.workers, str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        with self._lock:
            self.workers, self.error, self.at, self._busy = workers, error, time.monotonic(), False
