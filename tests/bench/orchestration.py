"""(b) Per-phase orchestration overhead: no-op phases through a real `autopack api` and `autopack worker`.

A phase whose command and validation are `true` does nothing, so everything it costs is overhead:
the in-worker execution (phase started_at → finished_at: lease, worktree, builder, git, records) and
the dispatch gap before it (previous phase finished_at, or the run's created_at → this started_at).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from api.client import ApiClient
from api.sample_repo import make_sample_repo
from api.serve import free_port
from shared.db import session_factory, transaction
from shared.keys import create_key
from shared.models import Run
from shared.settings import Settings
from shared.states import RUN_TERMINAL, RunState
from tests.bench.stats import Row, Summary, ratio, times
from tests.support.procs import Proc, api_process, worker_process

SECTION = "(b) per phase"
TARGET_MS = 40.0
POLL_SECONDS = 0.02
RUN_TIMEOUT = 60.0
STALL_SECONDS = 1.0
BUSY = "busy: another worker holds this run"


def fleet_settings(db_url: str, redis_url: str, workspace: Path, push: bool = True) -> Settings:
    """Product defaults, except a fast reconciler: a dropped delivery then stalls a run ~5 s, not ~75 s."""
    return Settings(
        database_url=db_url,
        broker_url=redis_url,
        workspace_dir=workspace,
        worker_concurrency=2,
        auth_required=True,
        allowed_repos=[f"{Path(tempfile.gettempdir()).resolve()}/**"],  # run.py works in a temp dir
        push_results=push,
        reconcile_interval_seconds=1,
        redispatch_after_seconds=5,
        log_level="WARNING",
        _env_file=None,
    )


def new_api_key(db_url: str) -> str:
    with transaction(db_url) as session:
        _, plain = create_key(session, "bench")
    return plain


@dataclass(frozen=True)
class Fleet:
    client: ApiClient
    worker: Proc


@contextmanager
def fleet(settings: Settings, logdir: Path) -> Iterator[Fleet]:
    """One `autopack worker` (concurrency 2) and one `autopack api`; yields them with a keyed client."""
    logdir.mkdir(parents=True, exist_ok=True)
    with (
        worker_process(settings, "worker", logdir, concurrency=settings.worker_concurrency) as worker,
        api_process(settings, free_port(), logdir) as url,
    ):
        client = ApiClient(url, new_api_key(settings.database_url))
        try:
            yield Fleet(client, worker)
        finally:
            client.close()


def noop_spec(repo: Path, i: int, phases: int) -> dict[str, Any]:
    return {
        "repo": str(repo),
        "base_ref": "main",
        "name": f"bench-noop-{i}",
        "config": {"builder": "script", "max_attempts": 1},
        "phases": [
            {"name": f"noop-{k}", "scope": ["src/"], "command": "true", "validation": ["true"]}
            for k in range(phases)
        ],
    }


def finished_runs(db_url: str, run_ids: set[int]) -> set[int]:
    """Which of these runs are terminal, read straight from the database (cheaper than the API)."""
    with session_factory(db_url)() as session:
        query = select(Run.id).where(Run.id.in_(run_ids), Run.state.in_(list(RUN_TERMINAL)))
        return set(session.scalars(query))


def drive(client: ApiClient, db_url: str, specs: list[dict[str, Any]], in_flight: int) -> dict[int, datetime]:
    """Submit runs one at a time, never more than `in_flight` unfinished; wait for all to end.

    Returns each run's id with the (client, same host) time just before its POST /runs.
    """
    submitted: dict[int, datetime] = {}
    pending: dict[int, float] = {}  # run id -> monotonic deadline
    queue = list(specs)
    while queue or pending:
        while queue and len(pending) < in_flight:
            at = datetime.now(UTC)
            run_id = int(client.submit(queue.pop(0))["id"])
            submitted[run_id] = at
            pending[run_id] = time.monotonic() + RUN_TIMEOUT
        time.sleep(POLL_SECONDS)
        for run_id in finished_runs(db_url, set(pending)):
            del pending[run_id]
        late = [run_id for run_id, deadline in pending.items() if time.monotonic() > deadline]
        if late:
            raise RuntimeError(f"runs {late} not finished after {RUN_TIMEOUT:.0f} s (see the worker log)")
    return submitted


def ts(value: str | None) -> datetime:
    if value is None:
        raise ValueError("a finished run lacks a timestamp")
    return datetime.fromisoformat(value)


def seconds(later: str | None, earlier: str | None) -> float:
    return (ts(later) - ts(earlier)).total_seconds()


@dataclass
class Samples:
    """Per-phase and per-run durations in seconds, pulled from GET /runs/{id}."""

    execution: list[float] = field(default_factory=list)
    gap: list[float] = field(default_factory=list)
    first_gap: list[float] = field(default_factory=list)
    later_gap: list[float] = field(default_factory=list)
    pre_attempt: list[float] = field(default_factory=list)
    attempt: list[float] = field(default_factory=list)
    post_attempt: list[float] = field(default_factory=list)
    submit_to_done: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def stalls(self) -> int:
        return sum(g > STALL_SECONDS for g in self.gap)

    @property
    def overhead(self) -> list[float]:
        return [e + g for e, g in zip(self.execution, self.gap, strict=True)]

    def add_run(self, run: dict[str, Any], submitted_at: datetime) -> None:
        if run["state"] != RunState.DONE_SUCCESS:
            self.failures.append(f"run {run['id']} {run['state']}: {run.get('failure_reason')}")
            return
        self.submit_to_done.append((ts(run["finished_at"]) - submitted_at).total_seconds())
        previous_end = run["created_at"]
        for phase in run["phases"]:
            self.add_phase(phase, previous_end)
            previous_end = phase["finished_at"]

    def add_phase(self, phase: dict[str, Any], previous_end: str) -> None:
        gap = seconds(phase["started_at"], previous_end)
        self.gap.append(gap)
        (self.first_gap if phase["index"] == 0 else self.later_gap).append(gap)
        self.execution.append(seconds(phase["finished_at"], phase["started_at"]))
        attempt = phase["attempt_log"][-1]
        self.pre_attempt.append(seconds(attempt["started_at"], phase["started_at"]))
        self.attempt.append(seconds(attempt["finished_at"], attempt["started_at"]))
        self.post_attempt.append(seconds(phase["finished_at"], attempt["finished_at"]))


@dataclass(frozen=True)
class OrchestrationResult:
    runs: int
    phases_per_run: int
    in_flight: int
    warmup_runs: int
    push_results: bool
    wall_seconds: float
    summaries: dict[str, Summary]
    failures: list[str]
    busy_deliveries: int
    stalls: int

    @property
    def overhead(self) -> Summary:
        return self.summaries["overhead"]

    def as_dict(self) -> dict[str, Any]:
        return {
            "runs": self.runs,
            "phases_per_run": self.phases_per_run,
            "max_in_flight": self.in_flight,
            "warmup_runs": self.warmup_runs,
            "push_results": self.push_results,
            "wall_seconds": self.wall_seconds,
            "busy_deliveries_dropped": self.busy_deliveries,
            "phases_stalled_over_1s": self.stalls,
            "target_overhead_median_ms": TARGET_MS,
            "failures": self.failures,
            **{name: s.as_dict() for name, s in self.summaries.items()},
        }

    def rows(self, celery_round_trip_ms: float) -> list[Row]:
        s = self.summaries
        target = f"target <= {TARGET_MS:.0f} ms"
        vs_celery = f"raw Celery RT {celery_round_trip_ms:.1f} ms"
        return [
            Row.timing(SECTION, "in-worker execution (started->finished)", s["execution"]),
            Row.timing(SECTION, "  of which before the attempt (lease, record)", s["pre_attempt"]),
            Row.timing(SECTION, "  of which the attempt (worktree, true, git)", s["attempt"]),
            Row.timing(SECTION, "  of which after the attempt (records)", s["post_attempt"]),
            Row.timing(SECTION, "dispatch gap (prev finished->started)", s["gap"]),
            Row.timing(SECTION, "  gap before phase 0 (run created->)", s["first_gap"]),
            Row.timing(SECTION, "  gap before phases 1+", s["later_gap"]),
            Row.timing(SECTION, "overhead = execution + gap", s["overhead"], target, self.verdict()),
            Row.timing(
                SECTION,
                "overhead vs raw Celery round trip",
                s["overhead"],
                vs_celery,
                times(ratio(s["overhead"].median_ms, celery_round_trip_ms)),
            ),
            *self.stall_rows(SECTION),
            Row.timing(
                "(b) per run",
                f"submit->DONE, {self.phases_per_run} phases, <= {self.in_flight} in flight",
                s["submit_to_done"],
            ),
        ]

    def variant_rows(self, main: OrchestrationResult) -> list[Row]:
        """This run with results not pushed, against `main` (pushed): what pushing costs per phase."""
        s, section = self.summaries, "(b) push_results=False"
        saved = main.overhead.median_ms - self.overhead.median_ms
        return [
            Row.timing(section, "in-worker execution", s["execution"]),
            Row.timing(section, "dispatch gap", s["gap"]),
            Row.timing(
                section,
                "overhead = execution + gap",
                s["overhead"],
                f"pushing costs {saved:.1f} ms/phase",
                times(ratio(self.overhead.median_ms, main.overhead.median_ms)),
            ),
            *self.stall_rows(section),
        ]

    def stall_rows(self, section: str) -> list[Row]:
        return [
            Row(section, "deliveries dropped as 'busy' (lease race)", str(self.busy_deliveries)),
            Row(section, f"phases whose gap exceeded {STALL_SECONDS:.0f} s", str(self.stalls)),
        ]

    def verdict(self) -> str:
        got = self.overhead.median_ms
        return f"{times(ratio(got, TARGET_MS))} ({'met' if got <= TARGET_MS else 'MISSED'})"


def summarize(samples: Samples) -> dict[str, Summary]:
    names = ["execution", "pre_attempt", "attempt", "post_attempt", "gap", "first_gap", "later_gap"]
    out = {name: Summary.of(getattr(samples, name)) for name in names}
    out["overhead"] = Summary.of(samples.overhead)
    out["submit_to_done"] = Summary.of(samples.submit_to_done)
    return out


def busy_deliveries(worker_log: str) -> int:
    """Deliveries the worker acknowledged without running, because the run's lease was still held."""
    return sum("workers.tasks" in line and BUSY in line for line in worker_log.splitlines())


def measure(
    running: Fleet, db_url: str, repo: Path, runs: int, phases: int, in_flight: int, warmup: int
) -> tuple[float, Samples, int]:
    """Warm up, then drive the measured runs: (wall seconds, samples, deliveries dropped as busy)."""
    client, worker = running.client, running.worker
    # Warm-up: the first phases clone the mirror and create the pooled worktrees.
    drive(client, db_url, [noop_spec(repo, -1 - i, phases) for i in range(warmup)], in_flight)
    log_offset = len(worker.output())
    start = time.monotonic()
    submitted = drive(client, db_url, [noop_spec(repo, i, phases) for i in range(runs)], in_flight)
    wall = time.monotonic() - start
    busy = busy_deliveries(worker.output()[log_offset:])
    samples = Samples()
    for run_id, at in sorted(submitted.items()):
        samples.add_run(client.run(run_id), at)
    return wall, samples, busy


def bench(
    db_url: str,
    redis_url: str,
    workdir: Path,
    logdir: Path,
    *,
    runs: int = 50,
    phases: int = 4,
    in_flight: int = 2,
    warmup: int = 2,
    push: bool = True,
) -> OrchestrationResult:
    settings = fleet_settings(db_url, redis_url, workdir / "workspace", push)
    repo = make_sample_repo(workdir / "origin")
    with fleet(settings, logdir) as running:
        wall, samples, busy = measure(running, db_url, repo, runs, phases, in_flight, warmup)
    return OrchestrationResult(
        runs=runs,
        phases_per_run=phases,
        in_flight=in_flight,
        warmup_runs=warmup,
        push_results=push,
        wall_seconds=wall,
        summaries=summarize(samples),
        failures=samples.failures,
        busy_deliveries=busy,
        stalls=samples.stalls,
    )
