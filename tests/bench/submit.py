"""(n) `POST /runs` with 3 no-op phases through a real `autopack api` (1, then 2 processes): median latency of
sequential submissions, and the sustained rate of 8 concurrent clients while one worker executes the
runs (the issue's conditions). Same run as (a) when both are chosen; the comparison is the target."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from api.client import ApiClient
from api.sample_repo import make_sample_repo
from tests.bench.orchestration import fleet, fleet_settings, noop_spec
from tests.bench.stats import Row, Summary, timed

SECTION = "(n) submit"
TARGET_MS = 10.0
TARGET_RATE = 200.0
CLIENTS = 8
API_WORKERS = 2
"""`AUTOPACK_API_WORKERS` of the second measurement: one per core of this 2-core machine."""


@dataclass(frozen=True)
class SubmitResult:
    api_workers: int
    sequential: Summary
    concurrent: Summary
    submitted: int
    seconds: float
    api_cpu_seconds: float
    """CPU the API's processes spent during the concurrent submissions: its own cost per request, which
    the rate mixes with whatever else the machine runs (the worker, Postgres, the clients)."""

    @property
    def rate(self) -> float:
        return self.submitted / self.seconds

    def as_dict(self) -> dict[str, Any]:
        return {
            "api_workers": self.api_workers,
            "sequential": self.sequential.as_dict(),
            "concurrent": self.concurrent.as_dict(),
            "clients": CLIENTS,
            "submitted": self.submitted,
            "seconds": self.seconds,
            "runs_per_second": self.rate,
            "api_cpu_ms_per_request": self.api_cpu_ms,
        }

    @property
    def api_cpu_ms(self) -> float:
        return self.api_cpu_seconds * 1000 / max(self.submitted, 1)

    def rows(self) -> list[Row]:
        where = f"{self.api_workers} API process{'es' if self.api_workers > 1 else ''}"
        return [
            Row.timing(
                SECTION,
                f"POST /runs (3 phases), one client, {where}",
                self.sequential,
                f"target <= {TARGET_MS}",
            ),
            Row.timing(SECTION, f"POST /runs (3 phases), {CLIENTS} clients, {where}", self.concurrent),
            Row(
                SECTION,
                f"sustained rate, {CLIENTS} clients, {where}, one worker executing",
                f"{self.rate:.0f} /s",
                n=str(self.submitted),
                versus=f"target >= {TARGET_RATE:.0f} /s",
            ),
            Row(SECTION, f"API CPU per request, {CLIENTS} clients, {where}", f"{self.api_cpu_ms:.2f} ms"),
        ]


def bench(
    db_url: str, redis_url: str, workdir: Path, logdir: Path, runs: int, say: Callable[[str], None] = print
) -> list[SubmitResult]:
    """The same measurement with one API process, then with `API_WORKERS`."""
    repo = make_sample_repo(workdir / "origin")
    out = []
    for processes in (1, API_WORKERS):
        settings = fleet_settings(db_url, redis_url, workdir / f"workspace-{processes}", push=False)
        settings = settings.model_copy(update={"api_workers": processes})
        with fleet(settings, logdir / f"api-{processes}") as f:
            for i in range(10):  # warm-up: connections, the repository's first resolution
                f.client.submit(noop_spec(repo, i, 3))
            seq = Summary.of([timed(f.client.submit, noop_spec(repo, 100 + i, 3)) for i in range(runs)])
            cpu = api_cpu_seconds()
            latencies, seconds = _concurrent(f.client, repo, runs * 2)
            cpu = api_cpu_seconds() - cpu
        say(
            f"    {processes} API process(es): one client median {seq.median_ms:.1f} ms, "
            f"{len(latencies) / seconds:.0f} /s with {CLIENTS} clients"
        )
        out.append(SubmitResult(processes, seq, Summary.of(latencies), len(latencies), seconds, cpu))
    return out


def api_cpu_seconds() -> float:
    """CPU so far of the `autopack api` this process started, its uvicorn worker processes included."""
    total = 0.0
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            if "api" in child.cmdline()[2:3]:  # [python, autopack, api, --port, N]
                for proc in [child, *child.children(recursive=True)]:
                    times = proc.cpu_times()
                    total += times.user + times.system
    return total


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
