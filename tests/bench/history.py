"""(l) History: per-phase CPU and wall after 0, 1,000, 5,000 and 10,000 earlier runs.

The point is the repository and database shape, not waiting, so history is generated, not executed
(tests/bench/history_gen.py): N result commits, each on its own `refs/heads/autopack/run-<id>` (and one
run in ten leaves a fenced phase ref behind, as a taken-over holder does), in the origin and in this
host's mirror (a long-lived host published them there), refs packed as the reconciler packs them; N
ended runs with two phases each in Postgres. Then real
phases (`true`, validated by `true`, results pushed) run through `execute_phase` in this process, and
their wall and CPU (this process plus every git it spawned) are taken per phase, with the time of one
reconciler pass.

`legacy=True` measures the code before the fix: every fetch and clone takes every ref, every push
negotiates over protocol v0 (the remote advertises every ref).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from api.sample_repo import make_sample_repo
from shared.db import transaction
from shared.runs import create_run
from shared.settings import Settings
from tests.bench import history_fresh
from tests.bench.cpu_split import LOOP, CpuSplit, cpu_seconds, python_cpu_ms, spawn_cpu_ms, verb
from tests.bench.history_gen import add_db_history, add_git_history, git_out, libpq, noop_spec
from tests.bench.origin_cpu import OriginMeter
from tests.bench.reaping import adopt_orphans
from tests.bench.stats import Row, Summary, ms, ratio, times
from workers import retention
from workers.executor import WorkerContext, execute_phase
from workers.runtime import Reconciler
from workers.workspace import mirror as mirror_mod

SECTION = "(l) history"
TARGET = "target <= 1.15x fresh"
LEVELS = (0, 1_000, 5_000, 10_000)
Say = Callable[[str], None]


class NullDispatcher:
    """The bench drives phases itself: nothing is queued."""

    def enqueue(self, run_id: int, phase_id: int, *, background: bool = False) -> None:
        return None

    def waiting(self) -> set[tuple[int, int]] | None:
        return set()


def bench_settings(db_url: str, workspace: Path) -> Settings:
    return Settings(
        database_url=db_url,
        broker_url="memory://",
        workspace_dir=workspace,
        worktrees_per_repo=2,
        allowed_repos=[f"{Path(tempfile.gettempdir()).resolve()}/**"],
        push_results=True,
        log_level="WARNING",
        _env_file=None,  # type: ignore[call-arg]
    )


OLD_FETCH_REFSPECS = (
    "+refs/heads/*:refs/heads/*",
    "+refs/tags/*:refs/tags/*",
    "+refs/autopack/*:refs/autopack/*",
)


@contextmanager
def legacy_git(db_url: str) -> Iterator[None]:
    """The code before the fix: mirrors clone and fetch every ref, no commit-graph is written, and
    the reconciler's `lagging_branches` has no partial index."""
    saved = (mirror_mod.write_commit_graph, mirror_mod.Mirror._fetch_missing, mirror_mod.Mirror._clone)

    def fetch_all(self: mirror_mod.Mirror, sha: str) -> None:
        self._fetch(*OLD_FETCH_REFSPECS)

    def clone_all(self: mirror_mod.Mirror) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        subprocess.run(["git", "clone", "--quiet", "--bare", "--", self.repo, str(tmp)], check=True)
        for n, spec in enumerate(OLD_FETCH_REFSPECS):
            git_out("config", *(["--add"] if n else []), "remote.origin.fetch", spec, git_dir=tmp)
        git_out("config", "gc.auto", "0", git_dir=tmp)
        tmp.rename(self.path)

    mirror_mod.write_commit_graph = lambda git_dir: None
    mirror_mod.Mirror._fetch_missing = fetch_all  # type: ignore[method-assign]
    mirror_mod.Mirror._clone = clone_all  # type: ignore[method-assign]
    with psycopg.connect(libpq(db_url), autocommit=True) as conn:
        conn.execute("DROP INDEX IF EXISTS ix_runs_branch_lagging")
    try:
        yield
    finally:
        mirror_mod.write_commit_graph = saved[0]
        mirror_mod.Mirror._fetch_missing = saved[1]  # type: ignore[method-assign]
        mirror_mod.Mirror._clone = saved[2]  # type: ignore[method-assign]


def next_run_id(db_url: str) -> int:
    with psycopg.connect(libpq(db_url)) as conn:
        row = conn.execute("SELECT coalesce(max(id), 0) + 1 FROM runs").fetchone()
    return int(row[0]) if row else 1


@dataclass
class Level:
    """What was measured after `history` earlier runs."""

    history: int
    label: str = ""
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    origin_cpu: list[float] = field(default_factory=list)
    """Of `cpu`, what the local origin's receive-pack used (a remote's server in a fleet)."""
    reconcile: list[float] = field(default_factory=list)
    fetch_cpu: list[float] = field(default_factory=list)
    git_ms: dict[str, float] = field(default_factory=dict)
    cpu_by: dict[str, float] = field(default_factory=dict)
    """Milliseconds of CPU per phase by process (tests/bench/cpu_split.py)."""
    failures: list[str] = field(default_factory=list)

    @property
    def worker_cpu(self) -> list[float]:
        return [c - o for c, o in zip(self.cpu, self.origin_cpu, strict=True)]

    def said(self) -> str:
        cpu, own, wall = (Summary.of(x).median_ms for x in (self.cpu, self.worker_cpu, self.wall))
        return f"phase wall {wall:.0f} ms, CPU {cpu:.0f} ms ({own:.0f} ms without the origin's)"


def run_phases(
    ctx: WorkerContext,
    repo: Path,
    name: str,
    level: Level | None,
    meter: OriginMeter | None = None,
    split: CpuSplit | None = None,
) -> None:
    """One 2-phase run, each phase executed here; `level` None: a warm-up, not recorded."""
    with transaction(ctx.settings.database_url) as session:
        run = create_run(session, noop_spec(repo, name))
        run_id, phase_ids = run.id, run.phase_ids
    for phase_id in phase_ids:
        origin = meter.seconds() if meter else 0.0
        wall, cpu = time.perf_counter(), cpu_seconds()
        with split.phase() if split else nullcontext():
            outcome = execute_phase(ctx, run_id, phase_id)
        wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
        origin = (meter.seconds() - origin) if meter else 0.0
        if level is None:
            continue
        if outcome != "complete":
            level.failures.append(f"run {run_id} phase {phase_id}: {outcome}")
        level.wall.append(wall)
        level.cpu.append(cpu)
        level.origin_cpu.append(origin)


@contextmanager
def traced(path: Path) -> Iterator[Path]:
    """GIT_TRACE2_EVENT for every git this process spawns while inside."""
    os.environ["GIT_TRACE2_EVENT"] = str(path)
    try:
        yield path
    finally:
        del os.environ["GIT_TRACE2_EVENT"]


def git_time_by_command(trace: Path, phases: int) -> dict[str, float]:
    """Milliseconds per phase spent in each git command (by its verb; children such as receive-pack and
    upload-pack count on their own), from a trace2 event log."""
    verbs: dict[str, str] = {}
    total: dict[str, float] = defaultdict(float)
    for line in trace.read_text().splitlines():
        event = json.loads(line)
        sid = event.get("sid", "")
        if event.get("event") == "start":
            verbs[sid] = verb(event.get("argv", []))
        elif event.get("event") == "exit" and "/" not in sid.rsplit("/", 1)[-1]:
            total[verbs.get(sid, "?")] += float(event.get("t_abs", 0.0)) * 1000 / max(phases, 1)
    return dict(sorted(total.items(), key=lambda kv: -kv[1]))


def measure_level(
    ctx: WorkerContext,
    repo: Path,
    history: int,
    phases: int,
    workdir: Path,
    meter: OriginMeter,
    tag: str = "",
) -> Level:
    level, split = Level(history), CpuSplit()
    run_phases(ctx, repo, f"warm-{history}{tag}", None)
    for i in range(max(phases // 2, 1)):
        run_phases(ctx, repo, f"bench-{history}{tag}-{i}", level, meter, split)
    level.cpu_by = split.ms_per_phase()
    with traced(workdir / f"trace-{history}{tag}.json") as trace:
        run_phases(ctx, repo, f"traced-{history}{tag}", None)
    level.git_ms = git_time_by_command(trace, 2)
    reconciler = Reconciler(ctx.settings, ctx.dispatcher)
    for _ in range(3):
        start = time.perf_counter()
        reconciler.run_once()
        level.reconcile.append(time.perf_counter() - start)
    level.fetch_cpu = fetch_samples(ctx, repo, history)
    return level


FETCHES = 5
RETENTION_BATCH = 500


def fetch_samples(ctx: WorkerContext, repo: Path, history: int) -> list[float]:
    """CPU of this host's mirror fetching one commit another host pushed (a run that moved host):
    a commit on a new run branch of the origin, then `Mirror.ensure` of it."""
    origin, mirror = repo / ".git", ctx.workspace.mirror(str(repo))
    tree = git_out("rev-parse", "main^{tree}", git_dir=origin).strip()
    out = []
    for i in range(FETCHES):
        sha = git_out(
            "commit-tree", "-p", "main", "-m", f"elsewhere {history} {i}", tree, git_dir=origin
        ).strip()
        git_out("update-ref", f"refs/heads/autopack/run-{10**9 + history + i}", sha, git_dir=origin)
        cpu = cpu_seconds()
        mirror.ensure(sha)
        out.append(cpu_seconds() - cpu)
    return out


@dataclass(frozen=True)
class HistoryResult:
    legacy: bool
    levels: list[Level]
    spawn_ms: float = 0.0
    """The machine's price of a process, measured in the same run: CPU of one `true` spawned and
    reaped (parent and child). A no-op phase spawns several; this differs twofold between machines."""
    python_ms: float = 0.0
    """The machine's Python speed, measured in the same run: CPU of `cpu_split.LOOP` loop iterations."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "legacy": self.legacy,
            "spawn_cpu_ms": self.spawn_ms,
            "python_loop_cpu_ms": self.python_ms,
            "levels": [
                {
                    "history": lv.history,
                    "label": lv.label,
                    "wall": Summary.of(lv.wall).as_dict(),
                    "cpu": Summary.of(lv.cpu).as_dict(),
                    "worker_cpu": Summary.of(lv.worker_cpu).as_dict(),
                    "reconcile_pass": Summary.of(lv.reconcile).as_dict(),
                    "mirror_fetch_cpu": Summary.of(lv.fetch_cpu).as_dict(),
                    "git_ms_per_phase": lv.git_ms,
                    "cpu_ms_per_phase_by_process": lv.cpu_by,
                    "failures": lv.failures,
                }
                for lv in self.levels
            ],
        }

    def rows(self) -> list[Row]:
        label = " (legacy: every ref)" if self.legacy else ""
        first = self.levels[0] if self.levels else Level(0)
        fresh, fresh_own = (Summary.of(x).median_ms for x in (first.cpu, first.worker_cpu))
        rows = [
            Row(SECTION + label, "machine: one `true` spawned, CPU (parent + child)", ms(self.spawn_ms)),
            Row(SECTION + label, f"machine: {LOOP:,} Python loop iterations, CPU", ms(self.python_ms)),
        ]
        for lv in self.levels:
            cpu, own = Summary.of(lv.cpu), Summary.of(lv.worker_cpu)
            grow, grow_own = times(ratio(cpu.median_ms, fresh)), times(ratio(own.median_ms, fresh_own))
            at = f"after {lv.history:,} runs{lv.label}:"
            rows += [
                Row.timing(SECTION + label, f"{at} phase wall", Summary.of(lv.wall)),
                Row.timing(SECTION + label, f"{at} phase CPU, worker + local origin", cpu, "fresh", grow),
                Row.timing(SECTION + label, f"{at} phase CPU, worker", own, TARGET, grow_own),
                Row.timing(SECTION + label, f"{at} reconciler pass", Summary.of(lv.reconcile)),
                Row.timing(SECTION + label, f"{at} mirror fetch of 1 commit, CPU", Summary.of(lv.fetch_cpu)),
            ]
            top = ", ".join(f"{k} {v:.0f}" for k, v in list(lv.git_ms.items())[:4])
            rows.append(Row(SECTION + label, f"{at} git ms/phase", top))
            if lv.cpu_by:
                split = ", ".join(f"{k} {v:.1f}" for k, v in lv.cpu_by.items() if v >= 0.05)
                rows.append(Row(SECTION + label, f"{at} CPU ms/phase by process", split))
        return rows


def bench(db_url: str, workdir: Path, *, legacy: bool = False, **kwargs: Any) -> HistoryResult:
    """The section, as the code is, or (`legacy`) as it was before the fix."""
    if not legacy:
        return bench_levels(db_url, workdir, **kwargs)
    with legacy_git(db_url):
        return replace_legacy(bench_levels(db_url, workdir, **{**kwargs, "keep_runs": 0}))


def replace_legacy(result: HistoryResult) -> HistoryResult:
    return HistoryResult(True, result.levels, result.spawn_ms, result.python_ms)


def bench_levels(
    db_url: str,
    workdir: Path,
    *,
    levels: tuple[int, ...] = LEVELS,
    phases: int = 10,
    keep_runs: int = 1_000,
    say: Say = print,
) -> HistoryResult:
    """Measure each level in turn, growing one repository and one database from level to level; then
    (unless `keep_runs` is 0) once more after retention pruned all but the newest `keep_runs` runs."""
    workdir.mkdir(parents=True, exist_ok=True)
    repo = make_sample_repo(workdir / "origin")
    origin = repo / ".git"
    base_sha = git_out("rev-parse", "main", git_dir=origin).strip()
    ctx = WorkerContext.build(bench_settings(db_url, workdir / "workspace"), NullDispatcher())
    adopt_orphans()
    with OriginMeter(workdir).installed() as meter:
        spawn, python = spawn_cpu_ms(), python_cpu_ms()
        return HistoryResult(
            False, _levels(ctx, repo, base_sha, workdir, levels, phases, keep_runs, meter, say), spawn, python
        )


def _levels(
    ctx: WorkerContext,
    repo: Path,
    base_sha: str,
    workdir: Path,
    levels: tuple[int, ...],
    phases: int,
    keep_runs: int,
    meter: OriginMeter,
    say: Say,
) -> list[Level]:
    db_url = ctx.settings.database_url
    origin, mirror = repo / ".git", ctx.workspace.mirror(str(repo)).path
    results: list[Level] = []
    done = 0
    for target in levels:
        if target > done:
            start = time.perf_counter()
            first = next_run_id(db_url)
            ids = range(first, first + target - done)
            repos = [origin, *([mirror] if (mirror / "HEAD").exists() else [])]
            heads = add_git_history(repos, base_sha, ids)
            add_db_history(db_url, repo, base_sha, heads)
            say(f"    +{target - done:,} runs of history in {time.perf_counter() - start:.1f} s")
            done = target
        level = measure_level(ctx, repo, target, phases, workdir, meter)
        say(f"    after {target:,}: {level.said()}")
        results.append(level)
    if keep_runs and done > keep_runs:
        results.append(after_retention(ctx, repo, done, keep_runs, phases, workdir, meter, say))
        results.append(fresh_process_level(ctx, repo, done, phases, workdir, results[-1].label, say))
    return results


def fresh_process_level(
    ctx: WorkerContext, repo: Path, history: int, phases: int, workdir: Path, label: str, say: Say
) -> Level:
    """The retained state measured again by a new process (tests/bench/history_fresh.py)."""
    figures = history_fresh.measure_in_child(ctx.settings.database_url, workdir, repo, history, phases)
    level = Level(history, f"{label}, new process", **figures)
    say(f"    after {history:,}{level.label}: {level.said()}")
    return level


def after_retention(
    ctx: WorkerContext,
    repo: Path,
    history: int,
    keep: int,
    phases: int,
    workdir: Path,
    meter: OriginMeter,
    say: Say,
) -> Level:
    """The reconciler's retention keeping the newest `keep` runs' refs, pass after pass, then the
    phases measured again."""
    start = time.perf_counter()
    policy = {"result_branch_retention_runs": keep, "retention_batch": RETENTION_BATCH}
    reconciler = Reconciler(ctx.settings.model_copy(update=policy), ctx.dispatcher)
    passes = 0
    while passes < history // RETENTION_BATCH + 2:  # as many reconciler passes as it takes
        passes += 1
        reconciler._retain()
        if not retention.expired_runs(ctx.settings.database_url, retention.Policy(keep_runs=keep), 1):
            break
    for git_dir in (repo / ".git", ctx.workspace.mirror(str(repo)).path):
        mirror_mod.compact_refs(git_dir, limit=0)
    seconds = time.perf_counter() - start
    say(f"    retention keeping the newest {keep:,} runs: {passes} passes, {seconds:.1f} s")
    level = measure_level(ctx, repo, history, phases, workdir, meter, tag="-kept")
    level.label = f", retention keeping {keep:,}"
    say(f"    after {history:,}, {keep:,} kept: {level.said()}")
    return level
