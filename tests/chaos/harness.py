"""The chaos batch: real workers, real Redis and Postgres, faults injected while runs execute.

`run_chaos` submits scripted runs (every 4th a replay of run 0) through a real `autopack api`, keeps
>= 3 `autopack worker` processes (each its own "host" workspace) busy, and lets a seeded fault thread
SIGKILL workers (restarting them), restart Redis and Postgres, SIGSTOP lease holders until another
worker takes their run over, and fill the small tmpfs disk of one worker's workspace until writes fail
with ENOSPC. Then `check_invariants` reads Postgres and the repository and returns one row per invariant.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import redis
import sqlalchemy as sa

from api.client import ApiClient
from api.serve import free_port
from shared.db import transaction
from shared.keys import create_key
from shared.settings import Settings
from tests.support.procs import AUTOPACK, Proc, api_process, settings_env, spawn
from workers.workspace import WorkspaceManager

TERMINAL = {"DONE_SUCCESS", "DONE_FAILED", "CANCELLED"}
PHASE_TERMINAL = {"COMPLETE", "FAILED", "SKIPPED", "CANCELLED"}
KILLER_COMMAND = "kill -9 $(ps -o ppid= -p $$)"  # the bash of the command kills its prefork child

REDIS_START = [
    "redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", "6379",
    "--save", "", "--appendonly", "no", "--dir", "/var/lib/redis", "--logfile", "/var/log/redis/ci.log",
]  # fmt: skip


def log(msg: str) -> None:
    print(f"[chaos {datetime.now(UTC):%H:%M:%S}] {msg}", flush=True)


@dataclass
class ChaosConfig:
    runs: int = 50
    workers: int = 3
    concurrency: int = 2
    kills: int = 20
    stops: int = 10
    redis_restarts: int = 1
    pg_restarts: int = 1
    disk_fills: int = 1
    """Times the last worker's workspace disk (a tmpfs of `disk_mb`) is filled to ENOSPC."""
    disk_mb: int = 32
    seed: int = 0
    wave: int = 5
    """Runs are submitted in waves of this size until `runs` are in and every fault was injected."""
    max_runs: int = 200
    settle_timeout: float = 240


def chaos_settings(base: Settings) -> Settings:
    """The short timings the chaos batch runs with."""
    return base.model_copy(
        update={
            "lease_ttl_seconds": 4,
            "lease_heartbeat_seconds": 1,
            "reconcile_interval_seconds": 1,
            "redispatch_after_seconds": 3,
            "max_deliveries": 4,
            "min_free_disk_mb": 4,
            "worker_concurrency": 2,
            "log_level": "INFO",
        }
    )


def run_spec(repo: Path, k: int, phases: int = 3) -> dict[str, Any]:
    """Run `k` of the batch: deterministic scripted phases, so every commit is checkable."""
    return {
        "repo": str(repo),
        "base_ref": "main",
        "name": f"chaos-{k}",
        "config": {"builder": "script", "max_attempts": 2, "doctor": False},
        "phases": [
            {
                "name": f"p{i}",
                "scope": ["src/"],
                "deliverables": [f"src/p{i}.py"],
                "command": f"echo 'R = \"{k}-{i}\"' > src/p{i}.py; sleep 0.3",
                "validation": ["true"],
            }
            for i in range(phases)
        ],
    }


REPLAY_EVERY = 4
"""Every 4th run of the batch replays run 0's recorded changes (builder `replay`): the patch-apply
path an LLM answer takes, without an LLM."""


def batch_spec(repo: Path, k: int, source_id: int) -> dict[str, Any]:
    if k % REPLAY_EVERY != REPLAY_EVERY - 1:
        return run_spec(repo, k)
    spec = run_spec(repo, 0)  # the same phases as the source, so each recorded diff applies
    spec["name"] = f"chaos-{k}-replays-{source_id}"
    spec["config"] = {**spec["config"], "builder": "replay", "replay_of": source_id}
    return spec


def killer_spec(repo: Path) -> dict[str, Any]:
    return {
        "repo": str(repo),
        "base_ref": "main",
        "name": "chaos-killer",
        "config": {"builder": "script", "max_attempts": 2, "doctor": False},
        "phases": [
            {
                "name": "kills-its-worker",
                "scope": ["src/"],
                "command": KILLER_COMMAND,
                "validation": ["true"],
            },
            {"name": "never", "scope": ["src/"], "command": "echo 1 > src/never.py", "validation": ["true"]},
        ],
    }


# --- services -------------------------------------------------------------------------------------


def redis_up() -> bool:
    try:
        return bool(redis.Redis(host="127.0.0.1", port=6379, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def pg_up(url: str) -> bool:
    try:
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool, connect_args={"connect_timeout": 2})
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        return True
    except Exception:
        return False


def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not come back within {timeout}s")
        time.sleep(0.2)


def start_redis() -> None:
    if not redis_up():
        subprocess.run(REDIS_START, check=False, capture_output=True)
        _wait(redis_up, 30, "redis")


def restart_redis() -> None:
    try:
        subprocess.run(["redis-cli", "shutdown", "nosave"], check=False, capture_output=True, timeout=10)
        _wait(lambda: not redis_up(), 10, "redis shutdown")
        time.sleep(1)
    finally:
        start_redis()


def _pg_ctl(action: str) -> None:
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action],
        check=False,
        capture_output=True,
        timeout=60,
    )


def start_postgres(url: str) -> None:
    if not pg_up(url):
        _pg_ctl("start")
        _wait(lambda: pg_up(url), 60, "postgres")


def restart_postgres(url: str) -> None:
    try:
        _pg_ctl("restart")
    finally:
        start_postgres(url)


def fill_disk(path: Path) -> None:
    """Write zeros to `path` until the filesystem refuses (ENOSPC)."""
    chunk = b"\0" * 2**20
    with path.open("wb", buffering=0) as fh, suppress(OSError):
        while True:
            fh.write(chunk)
    with path.open("ab", buffering=0) as fh, suppress(OSError):
        while True:  # the last partial MiB, byte-sized
            fh.write(b"\0" * 4096)


@contextmanager
def small_disk(path: Path, size_mb: int) -> Iterator[Path]:
    """A tmpfs of `size_mb` MiB mounted at `path` (needs root)."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


# --- workers --------------------------------------------------------------------------------------


class Fleet:
    """N restartable `autopack worker` processes, each with its own workspace (a separate host)."""

    def __init__(
        self, settings: Settings, root: Path, n: int, concurrency: int, small_disk: Path | None = None
    ) -> None:
        self.settings = settings
        self.root = root
        self.small_disk = small_disk
        """A tmpfs holding the last worker's workspace, for the disk-full fault."""
        self.concurrency = concurrency
        self.names = [f"w{i}" for i in range(n)]
        self.procs: dict[str, Proc] = {}
        self.incarnation: dict[str, int] = dict.fromkeys(self.names, 0)
        self.lock = threading.Lock()

    def workspace(self, name: str) -> Path:
        if self.small_disk is not None and name == self.names[-1]:
            return self.small_disk / "workspace"
        return self.root / f"host-{name}"

    def disk_handbacks(self) -> int:
        """Phases the small-disk worker handed back because its disk was full (from its logs)."""
        logs = self.root.glob(f"{self.names[-1]}.*.log")
        return sum(p.read_text(errors="replace").count("workspace disk unavailable") for p in logs)

    def start(self, name: str, wait: bool = True) -> Proc:
        self.incarnation[name] += 1
        env = settings_env(self.settings, AUTOPACK_LOG_LEVEL="INFO")
        env["AUTOPACK_WORKSPACE_DIR"] = str(self.workspace(name))
        # The worker-killing run's command kills its own worker, which a box forbids by design (its
        # parent is the box's init): chaos workers run unboxed, explicitly.
        env["AUTOPACK_SANDBOX"] = "none"
        args = [AUTOPACK, "worker", "--hostname", f"{name}@%h", "--concurrency", str(self.concurrency)]
        proc = spawn(args, env, self.root / f"{name}.{self.incarnation[name]}.log")
        self.procs[name] = proc
        if wait:
            deadline = time.monotonic() + 60
            while "ready." not in proc.output():
                if proc.popen.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"worker {name} did not start:\n{proc.output()[-3000:]}")
                time.sleep(0.1)
        return proc

    def start_all(self, started: bool = False) -> None:
        for name in self.names:
            if not started:
                self.start(name, wait=False)
        for name in self.names:
            proc = self.procs[name]
            deadline = time.monotonic() + 60
            while "ready." not in proc.output():
                if proc.popen.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"worker {name} did not start:\n{proc.output()[-3000:]}")
                time.sleep(0.1)

    def kill(self, name: str) -> None:
        """SIGKILL the worker's whole process group (main and prefork children) and start it again."""
        with self.lock:
            self.procs[name].stop(signal.SIGKILL)
            self.start(name, wait=False)  # it boots in the background; a later kill may land mid-boot

    def ready(self, name: str) -> bool:
        proc = self.procs[name]
        return proc.popen.poll() is None and "ready." in proc.output()

    def owner_of(self, child_pid: int) -> str | None:
        """Which worker a prefork child pid belongs to."""
        try:
            parent = psutil.Process(child_pid).ppid()
        except psutil.Error:
            return None
        return next((n for n, p in self.procs.items() if p.pid == parent), None)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            proc.stop(signal.SIGKILL, timeout=10)


def _signal_tree(pid: int, sig: int) -> list[int]:
    """Signal a prefork child and every process it started (its commands run in their own groups)."""
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return []
    done = []
    for p in procs:
        with suppress(psutil.Error, ProcessLookupError):
            os.kill(p.pid, sig)
            done.append(p.pid)
    return done


# --- the batch ------------------------------------------------------------------------------------


@dataclass
class Fenced:
    run_id: int
    owner: str
    epoch: int
    stopped_at: datetime
    taken_over_by: str | None = None
    new_epoch: int | None = None


@dataclass
class ChaosState:
    kills: int = 0
    stops: int = 0
    redis_restarts: int = 0
    pg_restarts: int = 0
    disk_fills: int = 0
    disk_handbacks: int = 0
    fenced: list[Fenced] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    need_work: threading.Event = field(default_factory=threading.Event)
    in_transaction: int = 0
    """Freezes that caught the holder inside a Postgres transaction (thawed at once, round retried)."""


class Db:
    """Short-lived, retrying reads: Postgres may be restarting under us."""

    def __init__(self, url: str) -> None:
        self.engine = sa.create_engine(url, poolclass=sa.pool.NullPool)

    def rows(self, sql: str, **params: Any) -> list[Any]:
        for _ in range(100):
            try:
                with self.engine.connect() as conn:
                    return list(conn.execute(sa.text(sql), params).all())
            except sa.exc.OperationalError:
                time.sleep(0.3)
        raise RuntimeError(f"database unreachable for: {sql}")


class Chaos:
    def __init__(self, cfg: ChaosConfig, settings: Settings, fleet: Fleet, db: Db, services: threading.Lock):
        self.cfg = cfg
        self.settings = settings
        self.fleet = fleet
        self.db = db
        self.services = services  # held while Redis/Postgres restart: no submissions then
        self.rng = random.Random(cfg.seed)
        self.state = ChaosState()
        self.thread = threading.Thread(target=self._main, name="chaos-faults", daemon=True)

    def _plan(self) -> list[str]:
        plan = ["kill"] * self.cfg.kills + ["stop"] * self.cfg.stops + ["disk"] * self.cfg.disk_fills
        self.rng.shuffle(plan)
        for svc in ["redis"] * self.cfg.redis_restarts + ["pg"] * self.cfg.pg_restarts:
            plan.insert(self.rng.randint(len(plan) // 4, max(len(plan) // 4, 3 * len(plan) // 4)), svc)
        return plan

    def _main(self) -> None:
        try:
            for fault in self._plan():
                time.sleep(self.rng.uniform(0.2, 1.0))
                try:
                    getattr(self, f"_{fault}")()
                except Exception as exc:  # a fault that could not be injected is reported, not fatal
                    self.state.errors.append(f"{fault}: {exc!r}")
                    log(f"fault {fault} failed: {exc!r}")
        finally:
            self.state.done.set()

    def _kill(self) -> None:
        """SIGKILL a random worker that is up (one still booting from the last kill is not a target)."""
        deadline = time.monotonic() + 60
        while not (up := [n for n in self.fleet.names if self.fleet.ready(n)]):
            if time.monotonic() > deadline:
                raise RuntimeError("no worker came up within 60s")
            time.sleep(0.2)
        name = self.rng.choice(up)
        self.fleet.kill(name)
        self.state.kills += 1
        log(f"SIGKILL {name} (#{self.state.kills}), restarted")

    def _redis(self) -> None:
        with self.services:
            restart_redis()
        self.state.redis_restarts += 1
        log("Redis restarted")

    def _pg(self) -> None:
        with self.services:
            restart_postgres(self.settings.database_url)
        self.state.pg_restarts += 1
        log("Postgres restarted")

    def _disk(self) -> None:
        """Fill the small disk until a write fails with ENOSPC, keep it full until its worker has handed
        a phase back, then free it."""
        assert self.fleet.small_disk is not None
        ballast = self.fleet.small_disk / "ballast"
        before = self.fleet.disk_handbacks()
        fill_disk(ballast)
        self.state.need_work.set()
        try:
            deadline = time.monotonic() + 60
            while self.fleet.disk_handbacks() <= before:
                if time.monotonic() > deadline:
                    raise RuntimeError("no phase reached the full disk within 60s")
                time.sleep(0.2)
        finally:
            ballast.unlink()
            self.state.need_work.clear()
        self.state.disk_fills += 1
        log(f"disk of {self.fleet.names[-1]} filled to ENOSPC until it handed a phase back, then freed")

    def _stop(self) -> None:
        """SIGSTOP a lease holder until another worker holds its run, then SIGCONT it."""
        ttl = self.settings.lease_ttl_seconds
        with self.fleet.lock:  # no kill/restart of workers while one of them is frozen
            for _ in range(20):
                if self._freeze(ttl):
                    return
            raise RuntimeError("could not freeze a holder outside a transaction in 20 tries")

    def _candidates(self) -> list[Any]:
        deadline = time.monotonic() + 60  # all workers may be rebooting after kills
        self.state.need_work.set()
        try:
            while time.monotonic() < deadline:
                held = self.db.rows(
                    "SELECT r.id, r.lease_owner, r.lease_epoch FROM runs r JOIN phases p ON p.run_id = r.id"
                    " WHERE r.lease_owner IS NOT NULL AND r.lease_expires_at > now()"
                    " AND p.state = 'EXECUTING' AND r.name LIKE 'chaos-%' AND r.name <> 'chaos-killer'"
                )
                candidates = [r for r in held if self.fleet.owner_of(int(r.lease_owner.split("/")[1]))]
                if candidates:
                    return candidates
                time.sleep(0.1)
        finally:
            self.state.need_work.clear()
        raise RuntimeError("no executing lease holder to stop within 60s")

    def _in_transaction(self, pid: int) -> bool:
        """Does the frozen process hold an open Postgres transaction (and so maybe the run's row lock)?"""
        try:
            ports = [
                c.laddr.port
                for c in psutil.Process(pid).net_connections(kind="tcp")
                if c.raddr and c.raddr.port == 5432
            ]
        except psutil.Error:
            return False
        if not ports:
            return False
        rows = self.db.rows(
            "SELECT count(*) AS n FROM pg_stat_activity WHERE client_port = ANY(:ports)"
            " AND (state <> 'idle' OR xact_start IS NOT NULL)",
            ports=ports,
        )
        return bool(rows[0].n)

    def _freeze(self, ttl: float) -> bool:
        candidates = self._candidates()
        run_id, owner, epoch = self.rng.choice(candidates)
        child = int(owner.split("/")[1])
        stopped_at = datetime.now(UTC)
        frozen = _signal_tree(child, signal.SIGSTOP)
        try:
            if self._in_transaction(child):
                self.state.in_transaction += 1
                log(f"froze {owner} inside a DB transaction; thawed, retrying the round")
                return False
            now = self.db.rows("SELECT lease_owner, lease_epoch FROM runs WHERE id = :id", id=run_id)[0]
            if now.lease_epoch != epoch:  # it finished (and released) before the signal landed
                log(f"run {run_id}: lease moved on before SIGSTOP; round retried")
                return False
            fenced = Fenced(run_id, owner, epoch, stopped_at)
            wait_until = time.monotonic() + ttl + 20
            while time.monotonic() < wait_until:
                row = self.db.rows(
                    "SELECT lease_owner, lease_epoch, state FROM runs WHERE id = :id", id=run_id
                )
                if row and row[0].lease_epoch > epoch and (row[0].lease_owner or "") != owner:
                    fenced.taken_over_by, fenced.new_epoch = row[0].lease_owner, row[0].lease_epoch
                    break
                time.sleep(0.2)
            if fenced.taken_over_by is None:
                waits = self.db.rows(
                    "SELECT pid, state, wait_event_type, left(query, 60) AS q FROM pg_stat_activity"
                    " WHERE wait_event_type = 'Lock' OR state = 'idle in transaction'"
                )
                raise RuntimeError(f"run {run_id}: nobody took over from frozen {owner}; pg: {waits}")
            # Let the new holder get going (and possibly record) before the old one wakes up.
            time.sleep(self.rng.uniform(0.2, 1.5))
            self.state.fenced.append(fenced)
            self.state.stops += 1
            log(f"SIGSTOP {owner} epoch {epoch} on run {run_id}; taken over at epoch {fenced.new_epoch}")
            return True
        finally:
            _signal_tree(child, signal.SIGCONT)
            for pid in frozen:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)


@dataclass
class BatchResult:
    run_ids: list[int]
    killer_id: int
    state: ChaosState
    seconds: float
    repo: Path
    workspaces: list[Path]


@contextmanager
def services_guard(db_url: str) -> Iterator[None]:
    """Whatever happens, leave Redis and Postgres running."""
    try:
        yield
    finally:
        with suppress(Exception):
            start_redis()
        with suppress(Exception):
            start_postgres(db_url)


def disk_for(cfg: ChaosConfig, root: Path) -> contextlib.AbstractContextManager[Path | None]:
    """The small disk the disk-full fault needs (keep it mounted until the invariants are checked)."""
    return small_disk(root / "small-disk", cfg.disk_mb) if cfg.disk_fills else contextlib.nullcontext()


def run_chaos(
    cfg: ChaosConfig, base: Settings, repo: Path, root: Path, disk: Path | None = None
) -> BatchResult:
    """Run the batch under faults; return once every run is terminal (or the settle timeout passed)."""
    settings = chaos_settings(base)
    t0 = time.monotonic()
    db = Db(settings.database_url)
    with transaction(settings.database_url) as session:
        _, key = create_key(session, "chaos")
    fleet = Fleet(settings, root, cfg.workers, cfg.concurrency, disk)
    services = threading.Lock()
    chaos = Chaos(cfg, settings, fleet, db, services)
    ids: list[int] = []
    log(f"seed={cfg.seed} runs>={cfg.runs} workers={cfg.workers}x{cfg.concurrency}")
    with services_guard(settings.database_url):
        for name in fleet.names:  # workers boot while the API does
            fleet.start(name, wait=False)
        try:
            with api_process(settings, free_port(), root) as url:
                client = ApiClient(url, key)
                fleet.start_all(started=True)
                log("fleet ready")

                def submit(spec: dict[str, Any]) -> int:
                    with services:
                        return int(client.submit(spec)["id"])

                killer_id = submit(killer_spec(repo))
                ids.append(submit(run_spec(repo, 0)))  # the source the replayed runs re-emit
                wait_terminal(db, ids, 60)
                for _ in range(cfg.wave):
                    ids.append(submit(batch_spec(repo, len(ids), ids[0])))
                chaos.thread.start()
                while not chaos.state.done.is_set() or len(ids) < cfg.runs:
                    busy = db.rows("SELECT count(*) AS n FROM runs WHERE state IN ('QUEUED', 'RUNNING')")[0].n
                    wanted = len(ids) < cfg.max_runs or (chaos.state.need_work.is_set() and busy < 2)
                    if wanted and busy < cfg.workers * cfg.concurrency * 2:
                        for _ in range(cfg.wave):
                            ids.append(submit(batch_spec(repo, len(ids), ids[0])))
                    time.sleep(0.5)
                chaos.thread.join()
                log(f"faults done ({len(ids)} runs submitted); waiting for every run to end")
                wait_terminal(db, [*ids, killer_id], cfg.settle_timeout)
                # One more reconciler period: nothing may wake up and change a finished run.
                time.sleep(settings.reconcile_interval_seconds * 2)
        finally:
            fleet.stop_all()
    chaos.state.disk_handbacks = fleet.disk_handbacks() if disk else 0
    return BatchResult(
        ids, killer_id, chaos.state, time.monotonic() - t0, repo, [fleet.workspace(n) for n in fleet.names]
    )


def wait_terminal(db: Db, ids: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = db.rows(
            "SELECT count(*) AS n FROM runs WHERE id = ANY(:ids) AND state IN ('QUEUED', 'RUNNING')", ids=ids
        )
        if left[0].n == 0:
            return
        time.sleep(0.5)
    log(f"not every run terminal after {timeout}s")


# --- invariants -----------------------------------------------------------------------------------


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def _git(repo: Path, *args: str) -> str:
    out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=False)
    return out.stdout.strip() if out.returncode == 0 else ""


def _problems(items: list[str]) -> str:
    return f"{len(items)} problem(s): " + "; ".join(items[:5]) if items else "ok"


def check_invariants(res: BatchResult, settings: Settings) -> list[Check]:
    db = Db(settings.database_url)
    all_ids = [*res.run_ids, res.killer_id]
    runs = {r.id: r for r in db.rows("SELECT * FROM runs WHERE id = ANY(:ids)", ids=all_ids)}
    phases = db.rows("SELECT * FROM phases WHERE run_id = ANY(:ids) ORDER BY run_id, index", ids=all_ids)
    attempts = db.rows("SELECT * FROM attempts WHERE run_id = ANY(:ids) ORDER BY started_at", ids=all_ids)
    eff = db.rows("SELECT * FROM efficiency_metrics WHERE run_id = ANY(:ids)", ids=all_ids)
    by_run: dict[int, list[Any]] = {}
    for p in phases:
        by_run.setdefault(p.run_id, []).append(p)
    checks: list[Check] = []

    # 1. Terminal states.
    bad = [f"run {i} {r.state}" for i, r in runs.items() if r.state not in TERMINAL]
    bad += [f"run {p.run_id} phase {p.index} {p.state}" for p in phases if p.state not in PHASE_TERMINAL]
    for i in res.run_ids:
        r = runs[i]
        states = [p.state for p in by_run[i]]
        if r.state == "DONE_SUCCESS" and states != ["COMPLETE"] * len(states):
            bad.append(f"run {i} DONE_SUCCESS with phases {states}")
        if r.state == "DONE_FAILED" and "delivered" not in (r.failure_reason or ""):
            bad.append(f"run {i} failed: {r.failure_reason}")
    ok_runs = sum(runs[i].state == "DONE_SUCCESS" for i in res.run_ids)
    gave_up = sum(runs[i].state == "DONE_FAILED" for i in res.run_ids)
    checks.append(
        Check(
            "every phase reached exactly one terminal state",
            not bad,
            f"{ok_runs}/{len(res.run_ids)} runs DONE_SUCCESS, {gave_up} gave up after max deliveries; "
            + _problems(bad),
        )
    )

    # 2. Branches: one commit per completed phase, in order, the recorded ones, none from a fenced holder.
    bad = []
    sha_author = {a.commit_sha: (a.worker, a.lease_epoch) for a in attempts if a.commit_sha}
    for i in all_ids:
        r = runs[i]
        done = [p for p in by_run[i] if p.state == "COMPLETE"]
        log_out = _git(res.repo, "log", "--reverse", "--format=%H %s", f"{r.base_sha}..autopack/run-{i}")
        got = [line.split(" ", 1) for line in log_out.splitlines()]
        want = [[p.commit_sha, f"autopack: run {i} phase {p.index} {p.name}"] for p in done]
        if got != want:
            bad.append(f"run {i}: branch {[g[1] for g in got]} != recorded {[w[1] for w in want]}")
        if done and r.head_sha != done[-1].commit_sha:
            bad.append(f"run {i}: head {r.head_sha[:8]} is not the last phase commit")
        for p in done:
            author = sha_author.get(p.commit_sha)
            if any(author == (f.owner, f.epoch) and p.finished_at >= f.stopped_at for f in res.state.fenced):
                bad.append(f"run {i} phase {p.index}: commit recorded by frozen holder {author}")
            content = _git(res.repo, "show", f"{p.commit_sha}:src/p{p.index}.py")
            if i != res.killer_id and not content.endswith(f'-{p.index}"'):
                bad.append(f"run {i} phase {p.index}: unexpected content {content!r}")
    checks.append(Check("branches: one commit per completed phase, in order", not bad, _problems(bad)))

    # 3. Fencing: a frozen holder recorded nothing after it was frozen.
    bad = [f"{len(res.state.fenced)} frozen holders"] if not res.state.fenced else []
    for f in res.state.fenced:
        late = [
            a
            for a in attempts
            if a.worker == f.owner and a.lease_epoch == f.epoch and a.finished_at >= f.stopped_at
        ]
        if late:
            bad.append(f"run {f.run_id}: {len(late)} attempt(s) of frozen {f.owner} e{f.epoch}")
    checks.append(
        Check(
            "fencing: no write from a frozen, taken-over holder",
            not bad and bool(res.state.fenced),
            f"{len(res.state.fenced)} rounds; " + _problems(bad),
        )
    )

    # 4. Duplicates.
    bad = []
    for key, group in itertools.groupby(
        sorted(attempts, key=lambda a: (a.phase_id, a.number)), key=lambda a: (a.phase_id, a.number)
    ):
        if len(list(group)) > 1:
            bad.append(f"attempt {key} twice")
    eff_per_phase: dict[int, list[str]] = {}
    for e in eff:
        eff_per_phase.setdefault(e.phase_id, []).append(e.outcome)
    bad += [f"phase {pid}: efficiency rows {o}" for pid, o in eff_per_phase.items() if len(o) > 1]
    usage = db.rows(
        "SELECT call_key, count(*) AS n FROM llm_usage_events WHERE run_id = ANY(:ids) GROUP BY call_key"
        " HAVING count(*) > 1",
        ids=all_ids,
    )
    bad += [f"usage {u.call_key} x{u.n}" for u in usage]
    checks.append(
        Check(
            "no duplicate attempt / usage / efficiency rows",
            not bad,
            f"{len(attempts)} attempts, {len(eff)} efficiency rows; " + _problems(bad),
        )
    )

    # 4b. A phase succeeds once: a takeover adopts a success its predecessor recorded, never redoes it.
    succ: dict[int, list[Any]] = {}
    for a in attempts:
        if a.outcome == "SUCCESS":
            succ.setdefault(a.phase_id, []).append(a)
    bad = [
        f"phase {pid}: {len(xs)} SUCCESS attempts "
        + ", ".join(f"#{a.number} {a.worker} e{a.lease_epoch}" for a in xs)
        for pid, xs in succ.items()
        if len(xs) > 1
    ]
    checks.append(Check("at most one SUCCESS attempt per phase", not bad, _problems(bad)))

    # 5. No overlapping executions within a run: recorded attempts, and phase spans.
    bad = []
    for i in all_ids:
        spans = sorted((a.started_at, a.finished_at) for a in attempts if a.run_id == i)
        for x, y in itertools.pairwise(spans):
            if y[0] < x[1]:
                bad.append(f"run {i}: attempt {x[0]:%T.%f}-{x[1]:%T.%f} overlaps {y[0]:%T.%f}-{y[1]:%T.%f}")
        done = [p for p in by_run[i] if p.started_at and p.finished_at]
        for a, b in itertools.pairwise(done):
            if b.started_at < a.finished_at:
                bad.append(f"run {i}: phase {b.index} started before phase {a.index} finished")
    checks.append(Check("no overlapping executions within a run", not bad, _problems(bad)))

    # 6. Nothing left behind after the reconciler had its period.
    later = db.rows(
        "SELECT id, state FROM runs WHERE id = ANY(:ids) AND state IN ('QUEUED','RUNNING')", ids=all_ids
    )
    checks.append(
        Check(
            "no run non-terminal after a reconciler period",
            not later,
            _problems([f"run {r.id} {r.state}" for r in later]),
        )
    )

    # 7. Worktrees: after pruning, each mirror's worktree list matches the directories on disk.
    bad = []
    n_wt = 0
    for ws in res.workspaces:
        WorkspaceManager(ws, settings.worktrees_per_repo).prune()
        for mirror in sorted((ws / "mirrors").glob("*.git")):
            listed = {
                Path(line.split(" ", 1)[1]).resolve()
                for line in _git(mirror, "worktree", "list", "--porcelain").splitlines()
                if line.startswith("worktree ")
            } - {mirror.resolve()}
            on_disk = {p.resolve() for p in (ws / "worktrees" / mirror.stem).glob("slot-*") if p.is_dir()}
            n_wt += len(on_disk)
            if listed != on_disk:
                bad.append(
                    f"{ws.name}: listed-only {sorted(map(str, listed - on_disk))}, "
                    f"disk-only {sorted(map(str, on_disk - listed))}"
                )
            if len(on_disk) > settings.worktrees_per_repo:
                bad.append(f"{ws.name}: {len(on_disk)} worktrees > pool size {settings.worktrees_per_repo}")
    checks.append(Check("no leaked worktrees after pruning", not bad, f"{n_wt} worktrees; " + _problems(bad)))

    # 8. The phase that kills its worker every time ends FAILED after bounded deliveries, with the reason.
    kp = by_run[res.killer_id]
    kr = runs[res.killer_id]
    bad = []
    if kr.state != "DONE_FAILED" or kp[0].state != "FAILED":
        bad.append(f"run {kr.state}, phase {kp[0].state}")
    if kp[0].deliveries != settings.max_deliveries + 1:  # the last delivery only records the failure
        bad.append(f"deliveries {kp[0].deliveries} != {settings.max_deliveries + 1}")
    if "delivered" not in (kp[0].failure_reason or ""):
        bad.append(f"reason {kp[0].failure_reason!r}")
    if kp[1].state != "SKIPPED":
        bad.append(f"next phase {kp[1].state}")
    checks.append(
        Check(
            f"worker-killing phase FAILED after {settings.max_deliveries} deliveries",
            not bad,
            f"reason: {kp[0].failure_reason!r}; " + _problems(bad),
        )
    )

    # 8b. A replayed run re-applies its source's recorded changes: same tree, same phase count.
    source = runs[res.run_ids[0]]
    replays = [runs[i] for i in res.run_ids if (runs[i].config or {}).get("builder") == "replay"]
    want_tree = _git(res.repo, "rev-parse", f"{source.head_sha}^{{tree}}")
    bad = [
        f"run {r.id} {r.state}: tree differs from source run {source.id}"
        for r in replays
        if r.state == "DONE_SUCCESS" and _git(res.repo, "rev-parse", f"{r.head_sha}^{{tree}}") != want_tree
    ]
    done = sum(r.state == "DONE_SUCCESS" for r in replays)
    bad += [] if replays else ["no replayed run in the batch"]
    checks.append(
        Check(
            "replayed runs reproduce their source's tree",
            not bad,
            f"{done}/{len(replays)} replays DONE_SUCCESS; " + _problems(bad),
        )
    )

    # 9. A full disk is the host's fault: phases handed back, named in the log, no attempt spent on it.
    if res.state.disk_fills:
        spent = [a for a in attempts if any(w in (a.failure_reason or "") for w in ("No space left", "disk"))]
        bad = [f"attempt {a.run_id}/{a.phase_id}#{a.number}: {a.failure_reason[:80]!r}" for a in spent]
        if not res.state.disk_handbacks:
            bad.append("no phase was handed back by the full host")
        checks.append(
            Check(
                "a full disk hands phases back, spending no attempt",
                not bad,
                f"{res.state.disk_handbacks} hand-back(s) over {res.state.disk_fills} fill(s); "
                + _problems(bad),
            )
        )
    return checks


def render(checks: list[Check], res: BatchResult, cfg: ChaosConfig) -> str:
    s = res.state
    lines = [
        f"chaos batch: seed {cfg.seed}, {len(res.run_ids)} runs x 3 phases (every {REPLAY_EVERY}th a replay) "
        "+ 1 worker-killing run, "
        f"{cfg.workers} workers x {cfg.concurrency}, {res.seconds:.0f}s",
        f"faults: SIGKILL {s.kills}/{cfg.kills}, SIGSTOP+takeover {s.stops}/{cfg.stops}, "
        f"Redis restarts {s.redis_restarts}/{cfg.redis_restarts}, "
        f"Postgres restarts {s.pg_restarts}/{cfg.pg_restarts}, "
        f"disk filled to ENOSPC {s.disk_fills}/{cfg.disk_fills}",
    ]
    if s.in_transaction:
        lines.append(f"freezes retried because the holder was inside a DB transaction: {s.in_transaction}")
    if s.errors:
        lines.append("fault errors: " + "; ".join(s.errors))
    width = max(len(c.name) for c in checks)
    lines.append(f"{'invariant':<{width}}  result  detail")
    lines.append("-" * (width + 16 + 40))
    lines += [f"{c.name:<{width}}  {'PASS' if c.ok else 'FAIL':<6}  {c.detail}" for c in checks]
    return "\n".join(lines)


def faults_complete(res: BatchResult, cfg: ChaosConfig) -> bool:
    s = res.state
    return (s.kills, s.stops, s.redis_restarts, s.pg_restarts, s.disk_fills) == (
        cfg.kills,
        cfg.stops,
        cfg.redis_restarts,
        cfg.pg_restarts,
        cfg.disk_fills,
    )
