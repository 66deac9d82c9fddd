"""(a) Raw Celery: no-op round trip and throughput on a real prefork worker. The floor for (b)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery.result import AsyncResult

from tests.bench.noop_app import REDIS_URL, noop
from tests.bench.procs import noop_worker
from tests.bench.stats import Row, Summary, timed

SECTION = "(a) raw Celery"
WARMUP = 20
TIMEOUT = 60


@dataclass(frozen=True)
class CeleryResult:
    round_trip: Summary
    tasks: int
    enqueue_seconds: float
    total_seconds: float

    @property
    def throughput(self) -> float:
        return self.tasks / self.total_seconds

    def as_dict(self) -> dict[str, Any]:
        return {
            "round_trip": self.round_trip.as_dict(),
            "throughput": {
                "tasks": self.tasks,
                "enqueue_seconds": self.enqueue_seconds,
                "total_seconds": self.total_seconds,
                "tasks_per_second": self.throughput,
            },
        }

    def rows(self) -> list[Row]:
        per_task = self.total_seconds / self.tasks * 1000
        return [
            Row.timing(SECTION, "noop.delay().get() round trip", self.round_trip),
            Row(
                SECTION,
                f"throughput, {self.tasks} enqueued then awaited",
                f"{self.throughput:.0f} tasks/s",
                n=str(self.tasks),
                versus=f"{per_task:.2f} ms/task",
            ),
        ]


def round_trip() -> None:
    noop.delay().get(timeout=TIMEOUT)


def round_trips(calls: int) -> list[float]:
    return [timed(round_trip) for _ in range(calls)]


def burst(tasks: int) -> tuple[float, float]:
    """Enqueue `tasks` no-ops, then await them all: (seconds to enqueue, seconds until the last result)."""
    start = time.perf_counter()
    results: list[AsyncResult] = [noop.delay() for _ in range(tasks)]
    enqueued = time.perf_counter() - start
    for result in results:
        result.get(timeout=TIMEOUT)
    return enqueued, time.perf_counter() - start


def bench(logdir: Path, calls: int = 300, tasks: int = 1000) -> CeleryResult:
    with noop_worker(logdir, REDIS_URL):
        round_trips(WARMUP)
        samples = round_trips(calls)
        enqueued, total = burst(tasks)
    return CeleryResult(Summary.of(samples), tasks, enqueued, total)
