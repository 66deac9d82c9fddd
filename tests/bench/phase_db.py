"""(m) Database work of one no-op phase, in-process, and the idle worker's memory.

A two-phase run (command and validation `true`, results pushed to a local origin) is created with
`shared.runs.create_run`; each phase goes through `workers.executor.execute_phase` in this process.
`DbCounter` counts, on the engine, what reaches Postgres: transactions (BEGIN), statements, pool
checkouts, liveness pings (`pool_pre_ping` or ours) and COMMIT/ROLLBACK. A round trip is one of
BEGIN, statement, COMMIT, a real ROLLBACK or a ping (psycopg 3 sends BEGIN on its own; a ROLLBACK of
an idle connection sends nothing). The lease heartbeat runs in a thread; its figures are included.

Memory: a real `autopack worker` (prefork, 2 children) is started idle and every process's USS/PSS is
read from /proc/<pid>/smaps_rollup; the modules it imported are checked for the API stack and numpy.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event

from shared.db import engine_for, transaction
from shared.runs import create_run
from shared.settings import Settings
from shared.specs import RunSpec
from tests.bench.stats import Row, Summary

SECTION = "(m) phase db"
BEFORE = {
    "middle phase": "7 / 49 / 7",
    "last phase": "7 / 51 / 7",
    "idle worker main: USS / PSS": "35.5 / 84.1 MiB",
    "idle worker child 0: USS / PSS": "73.7 / 93.9 MiB",
    "idle worker child 1: USS / PSS": "19.5 / 66.8 MiB",
}
"""This section's figures on cac3fc1 (before issue 12's database and memory work), same machine: the
comparison column. Transactions: acquire, start, cancel check, success, branch note, release, claim."""


@dataclass
class DbCounts:
    transactions: int = 0
    statements: int = 0
    checkouts: int = 0
    pings: int = 0
    commits: int = 0
    rollbacks: int = 0
    db_ms: float = 0.0
    """Wall time with a connection checked out (what the phase spends talking to the database)."""

    @property
    def round_trips(self) -> int:
        return self.transactions + self.statements + self.pings + self.commits + self.rollbacks

    def as_dict(self) -> dict[str, float]:
        return asdict(self) | {"round_trips": self.round_trips}


class DbCounter:
    """Counts an engine's traffic while active (thread-safe: the heartbeat thread also writes)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.counts = DbCounts()
        self._lock = threading.Lock()
        self._orig_ping = engine.dialect.do_ping

    def _bump(self, name: str) -> None:
        with self._lock:
            setattr(self.counts, name, getattr(self.counts, name) + 1)

    def _on_begin(self, conn: Any) -> None:
        self._bump("transactions")

    def _on_execute(self, *_: Any) -> None:
        self._bump("statements")

    def _on_checkout(self, _dbapi: Any, record: Any, _proxy: Any) -> None:
        self._bump("checkouts")
        record.info["bench_out_at"] = time.perf_counter()

    def _on_checkin(self, _dbapi: Any, record: Any) -> None:
        started = record.info.pop("bench_out_at", None)
        if started is not None:
            with self._lock:
                self.counts.db_ms += (time.perf_counter() - started) * 1000

    def _on_commit(self, conn: Any) -> None:
        self._bump("commits")

    def _on_rollback(self, conn: Any) -> None:
        self._bump("rollbacks")

    def _ping(self, dbapi_conn: Any) -> bool:
        self._bump("pings")
        return self._orig_ping(dbapi_conn)

    def __enter__(self) -> DbCounter:
        event.listen(self.engine, "begin", self._on_begin)
        event.listen(self.engine, "before_cursor_execute", self._on_execute)
        event.listen(self.engine.pool, "checkout", self._on_checkout)
        event.listen(self.engine.pool, "checkin", self._on_checkin)
        event.listen(self.engine, "commit", self._on_commit)
        event.listen(self.engine, "rollback", self._on_rollback)
        self.engine.dialect.do_ping = self._ping  # type: ignore[method-assign]
        return self

    def __exit__(self, *_: object) -> None:
        event.remove(self.engine, "begin", self._on_begin)
        event.remove(self.engine, "before_cursor_execute", self._on_execute)
        event.remove(self.engine.pool, "checkout", self._on_checkout)
        event.remove(self.engine.pool, "checkin", self._on_checkin)
        event.remove(self.engine, "commit", self._on_commit)
        event.remove(self.engine, "rollback", self._on_rollback)
        self.engine.dialect.do_ping = self._orig_ping  # type: ignore[method-assign]


class _Dispatch:
    """Records what a phase enqueues instead of sending it to a broker."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, int]] = []

    def enqueue(self, run_id: int, phase_id: int, *, background: bool = False) -> None:
        self.sent.append((run_id, phase_id))

    def waiting(self) -> set[tuple[int, int]] | None:
        return None


def noop_run_spec(repo: Path, phases: int, command: str = "true") -> RunSpec:
    return RunSpec.model_validate(
        {
            "repo": str(repo),
            "base_ref": "main",
            "name": "bench-phase-db",
            "config": {"builder": "script", "max_attempts": 1},
            "phases": [
                {"name": f"noop-{k}", "scope": ["src/"], "command": command, "validation": ["true"]}
                for k in range(phases)
            ],
        }
    )


def new_run(db_url: str, repo: Path, phases: int, command: str = "true") -> tuple[int, list[int]]:
    with transaction(db_url) as session:
        run = create_run(session, noop_run_spec(repo, phases, command))
        session.flush()
        return run.id, run.phase_ids


@dataclass
class PhaseCounts:
    """Per-phase counts: the first (middle) phase and the last (which also finishes the run)."""

    middle: DbCounts
    last: DbCounts
    middle_ms: list[float] = field(default_factory=list)
    last_ms: list[float] = field(default_factory=list)


def count_phases(settings: Settings, repo: Path, runs: int = 5, command: str = "true") -> PhaseCounts:
    """Run `runs` two-phase runs in-process; counts are those of the last run (warm pool), times all."""
    from workers.executor import WorkerContext, execute_phase

    ctx = WorkerContext.build(settings, _Dispatch())
    engine = engine_for(settings.database_url)
    result = PhaseCounts(DbCounts(), DbCounts())
    for _ in range(runs):
        run_id, (first, second) = new_run(settings.database_url, repo, 2, command)
        for phase_id, counts, times in (
            (first, "middle", result.middle_ms),
            (second, "last", result.last_ms),
        ):
            with DbCounter(engine) as counter:
                start = time.perf_counter()
                outcome = execute_phase(ctx, run_id, phase_id)
                times.append((time.perf_counter() - start) * 1000)
            assert outcome == "complete", outcome
            setattr(result, counts, counter.counts)
    return result


# ------------------------------------------------------------------------------------------- memory


@dataclass(frozen=True)
class ProcMemory:
    role: str
    pid: int
    rss_kib: int
    pss_kib: int
    uss_kib: int


def smaps(pid: int) -> ProcMemory:
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[-1] == "kB":
            fields[name] = int(parts[0])
    uss = fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
    return ProcMemory("", pid, fields.get("Rss", 0), fields.get("Pss", 0), uss)


def children_of(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out += [int(c) for c in text]
    return out


def worker_memory(settings: Settings, logdir: Path, concurrency: int = 2) -> list[ProcMemory]:
    """USS/PSS of an idle `autopack worker`: its main process and each prefork child."""
    from tests.support.procs import worker_process

    logdir.mkdir(parents=True, exist_ok=True)
    with worker_process(settings, "memory", logdir, concurrency=concurrency) as proc:
        time.sleep(2.0)  # the reconciler's first pass and the children's init are done
        main = proc.pid
        kids = children_of(main)
        rows = [ProcMemory("main", *_tail(smaps(main)))]
        rows += [ProcMemory(f"child {i}", *_tail(smaps(k))) for i, k in enumerate(kids)]
    return rows


def _tail(m: ProcMemory) -> tuple[int, int, int, int]:
    return m.pid, m.rss_kib, m.pss_kib, m.uss_kib


@dataclass
class PhaseDbResult:
    counts: PhaseCounts
    memory: list[ProcMemory]

    def as_dict(self) -> dict[str, Any]:
        c = self.counts
        return {
            "middle_phase": c.middle.as_dict(),
            "last_phase": c.last.as_dict(),
            "middle_ms": _summary(c.middle_ms).as_dict(),
            "last_ms": _summary(c.last_ms).as_dict(),
            "memory": [asdict(m) for m in self.memory],
        }

    def rows(self) -> list[Row]:
        c = self.counts
        rows = [
            Row(
                SECTION,
                f"{label}: transactions / round trips / pings",
                f"{n.transactions} / {n.round_trips} / {n.pings}",
                versus=f"before: {BEFORE[label]}",
            )
            for label, n in (("middle phase", c.middle), ("last phase", c.last))
        ]
        rows.append(Row.timing(SECTION, "in-process no-op phase wall (middle phase)", _summary(c.middle_ms)))
        rows.append(
            Row(SECTION, "middle phase: ms with a connection checked out", f"{c.middle.db_ms:.1f} ms")
        )
        rows += [
            Row(
                SECTION,
                f"idle worker {m.role}: USS / PSS",
                f"{m.uss_kib / 1024:.1f} / {m.pss_kib / 1024:.1f} MiB",
                versus=f"before: {BEFORE.get(f'idle worker {m.role}: USS / PSS', '?')}",
            )
            for m in self.memory
        ]
        return rows


def _summary(times_ms: list[float]) -> Summary:
    return Summary.of([t / 1000 for t in times_ms])


def bench(db_url: str, redis_url: str, workdir: Path, logdir: Path, say: Any = print) -> PhaseDbResult:
    from api.sample_repo import make_sample_repo

    repo = make_sample_repo(workdir / "origin")
    settings = Settings(
        database_url=db_url,
        broker_url=redis_url,
        workspace_dir=workdir / "workspace",
        worker_concurrency=2,
        log_level="WARNING",
        _env_file=None,  # type: ignore[call-arg]
    )
    counts = count_phases(settings, repo)
    say(f"    middle phase: {counts.middle.as_dict()}; last phase: {counts.last.as_dict()}")
    memory = worker_memory(settings, logdir)
    for m in memory:
        say(f"    {m.role} (pid {m.pid}): USS {m.uss_kib / 1024:.1f} MiB, PSS {m.pss_kib / 1024:.1f} MiB")
    return PhaseDbResult(counts, memory)
