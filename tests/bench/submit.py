"""(n) `POST /runs` with 3 no-op phases through a real `autopack api` process: median latency of
sequential submissions, and the sustained rate of 8 concurrent clients while one worker executes the
runs (the issue's conditions). Same run as (a) when both are chosen; the comparison is the target."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from api.client import ApiClient
from api.sample_repo import make_sample_repo
from tests.bench.orchestration import fleet, fleet_settings, noop_spec
from tests.bench.stats import Row, Summary, timed

SECTION = "(n) submit"
TARGET_MS = 10.0
TARGET_RATE = 200.0
CLIENTS = 8


@dataclass(frozen=True)
class SubmitResult:
    sequential: Summary
    concurrent: Summary
    submitted: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.submitted / self.seconds

    def as_dict(self) -> dict[str, Any]:
        return {
            "sequential": self.sequential.as_dict(),
            "concurrent": self.concurrent.as_dict(),
            "clients": CLIENTS,
            "submitted": self.submitted,
            "seconds": self.seconds,
            "runs_per_second": self.rate,
        }

    def rows(self) -> list[Row]:
        return [
            Row.timing(
                SECTION, "POST /runs (3 phases), one client", self.sequential, f"target <= {TARGET_MS}"
            ),
            Row.timing(SECTION, f"POST /runs (3 phases), {CLIENTS} clients", self.concurrent),
            Row(
                SECTION,
                f"sustained POST /runs rate, {CLIENTS} clients, one worker executing",
                f"{self.rate:.0f} /s",
                n=str(self.submitted),
                versus=f"target >= {TARGET_RATE:.0f} /s",
            ),
        ]


def bench(
    db_url: str, redis_url: str, workdir: Path, logdir: Path, runs: int, say: Callable[[str], None] = print
) -> SubmitResult:
    settings = fleet_settings(db_url, redis_url, workdir / "workspace", push=False)
    repo = make_sample_repo(workdir / "origin")
    with fleet(settings, logdir) as f:
        for i in range(10):  # warm-up: connections, the repository's first resolution
            f.client.submit(noop_spec(repo, i, 3))
        sequential = Summary.of([timed(f.client.submit, noop_spec(repo, 100 + i, 3)) for i in range(runs)])
        say(f"    one client: median {sequential.median_ms:.1f} ms")
        latencies, seconds = _concurrent(f.client, repo, runs * 2)
    return SubmitResult(sequential, Summary.of(latencies), len(latencies), seconds)


def _concurrent(client: ApiClient, repo: Path, total: int) -> tuple[list[float], float]:
    """`total` submissions shared by `CLIENTS` threads (httpx's pool gives each its own connection)."""
    latencies: list[float] = []
    lock = threading.Lock()
    per_client = total // CLIENTS

    def client_loop(k: int) -> None:
        specs = [noop_spec(repo, 10_000 + k * per_client + i, 3) for i in range(per_client)]
        mine = [timed(client.submit, spec) for spec in specs]
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(CLIENTS)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, time.perf_counter() - started
