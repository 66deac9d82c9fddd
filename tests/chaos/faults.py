"""The fault thread: SIGKILLs, SIGSTOPs until a takeover, kills inside git steps, service restarts and
a full disk, in a seeded random order while the batch runs."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psutil

from shared.db import IDLE_IN_TRANSACTION_MS
from shared.settings import Settings
from tests.chaos.config import ChaosConfig, Db, log
from tests.chaos.fleet import Fleet, signal_tree
from tests.chaos.services import fill_disk, restart_postgres, restart_redis
from tests.support.gitshim import FIRST_USE_STEPS, WORKER_STEPS


@dataclass
class Fenced:
    run_id: int
    owner: str
    epoch: int
    stopped_at: datetime
    taken_over_by: str | None = None
    new_epoch: int | None = None
    taken_at: datetime | None = None
    """When the fault thread saw another holder's epoch on the run."""
    woke_at: datetime | None = None
    """Just before the SIGCONT: every write of the holder after this is one it tried awake."""

    @property
    def pid(self) -> int:
        return int(self.owner.split("/")[1])


@dataclass
class ChaosState:
    kills: int = 0
    stops: int = 0
    redis_restarts: int = 0
    pg_restarts: int = 0
    disk_fills: int = 0
    disk_handbacks: int = 0
    git_kills: list[str] = field(default_factory=list)
    """The git step of each kill inside git the fault thread made happen."""
    first_use_kills: list[str] = field(default_factory=list)
    exited: list[str] = field(default_factory=list)
    """Workers that exited with no fault killing them (tests/chaos/fleet.py `note_exit`)."""
    """Kills inside `clone` / `worktree add`, armed before the hosts first used them."""
    fenced: list[Fenced] = field(default_factory=list)
    kill_log: list[tuple[str, float]] = field(default_factory=list)
    """(worker, wall-clock time) of every SIGKILL of a whole worker."""
    redis_restart_times: list[float] = field(default_factory=list)
    """Wall-clock time Redis went down, each restart."""
    errors: list[str] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    need_work: threading.Event = field(default_factory=threading.Event)
    in_transaction: int = 0
    """Freezes that caught the holder inside a Postgres transaction (thawed at once, round retried)."""


GIT_STEPS = [s for s in WORKER_STEPS if s not in (*FIRST_USE_STEPS, "fetch")]
"""The git steps every phase runs on a warm host (fleet.py kills the first-use ones once per host).
Not `fetch`: a mirror now fetches a commit by SHA only when its host lacks it, which a warm host may
not do for minutes (tests/test_slot_kills.py kills inside it deterministically)."""


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
        plan += ["git"] * self.cfg.git_kills
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
        self.state.kill_log.append((name, time.time()))
        self.fleet.kill(name)
        self.state.kills += 1
        log(f"SIGKILL {name} (#{self.state.kills}), restarted")

    def _busy_worker(self) -> str:
        """A worker executing a phase right now (a random one when none is): the fault that needs work
        then waits for the rest of a phase under way, not for one to arrive on a fixed host."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            held = self.db.rows(
                "SELECT r.lease_owner FROM runs r JOIN phases p ON p.run_id = r.id"
                " WHERE p.state = 'EXECUTING' AND r.lease_owner IS NOT NULL"
                " AND r.lease_expires_at > now() AND r.name <> 'chaos-killer'"
            )
            owners = {self.fleet.owner_of(int(r.lease_owner.split("/")[1])) for r in held}
            busy = sorted(w for w in owners if w is not None)
            if busy:
                return self.rng.choice(busy)
            time.sleep(0.1)
        return self.rng.choice(self.fleet.names)

    def _git(self) -> None:
        """Arm a kill inside a random git step of a busy worker and wait until a phase reaches it."""
        self.state.need_work.set()
        name = self._busy_worker()
        step = self.rng.choice(GIT_STEPS)
        shim = self.fleet.shims[name]
        before = len(shim.fired())
        shim.kill(step, self.rng.uniform(0.0, 0.03))
        try:
            deadline = time.monotonic() + 60
            while len(shim.fired()) <= before:
                if time.monotonic() > deadline:
                    shim.disarm(step)
                    raise RuntimeError(f"no phase on {name} reached git {step} within 60s")
                time.sleep(0.1)
        finally:
            self.state.need_work.clear()
        self.state.git_kills.append(step)
        log(f"SIGKILL of {name}'s child inside git {step} (#{len(self.state.git_kills)})")

    def _redis(self) -> None:
        with self.services:
            self.state.redis_restart_times.append(time.time())
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
                    self._await_refusal(self.state.fenced[-1])
                    return
            raise RuntimeError("could not freeze a holder outside a transaction in 20 tries")

    def _await_refusal(self, fenced: Fenced) -> None:
        """Keep every worker alive until the woken holder has tried a fenced write (its heartbeat ticks
        each second), so a kill right after the thaw cannot take away the evidence fencing is judged
        on. The check itself stays strict: this only waits, bounded, and never records anything."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            rows = self.db.rows(
                "SELECT count(*) AS n FROM chaos_refusals WHERE at >= :woke AND app LIKE :app",
                woke=fenced.woke_at,
                app=f"%/{fenced.pid}",
            )
            if rows[0].n:
                return
            time.sleep(0.2)
        log(f"run {fenced.run_id}: no refused write from woken {fenced.owner} within 10s")

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

    def _kill_landing(self, child: int) -> bool:
        """Is a git shim under `child` about to SIGKILL it (its kill claimed, not yet delivered)?"""
        try:
            below = {p.pid for p in psutil.Process(child).children(recursive=True)}
        except psutil.Error:
            return True
        return any(shim.landing() & below for shim in self.fleet.shims.values())

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
        if self._kill_landing(child):  # a git-step kill claimed just before: it would never wake
            log(f"run {run_id}: a git-step kill is landing on {owner}; round retried")
            return False
        stopped_at = datetime.now(UTC)
        frozen = signal_tree(child, signal.SIGSTOP)
        fenced: Fenced | None = None
        try:
            time.sleep(0.2)  # a query sent just before the signal lands in pg_stat_activity by now
            if self._in_transaction(child):
                self.state.in_transaction += 1
                log(f"froze {owner} inside a DB transaction; thawed, retrying the round")
                return False
            now = self.db.rows("SELECT lease_owner, lease_epoch FROM runs WHERE id = :id", id=run_id)[0]
            if now.lease_epoch != epoch:  # it finished (and released) before the signal landed
                log(f"run {run_id}: lease moved on before SIGSTOP; round retried")
                return False
            fenced = Fenced(run_id, owner, epoch, stopped_at)
            # A holder frozen inside a transaction that the check above missed pins the run row until
            # Postgres ends its session (idle_in_transaction_session_timeout, shared/db.py): wait that out.
            wait_until = time.monotonic() + ttl + IDLE_IN_TRANSACTION_MS / 1000 + 10
            while time.monotonic() < wait_until:
                row = self.db.rows(
                    "SELECT lease_owner, lease_epoch, state FROM runs WHERE id = :id", id=run_id
                )
                if row and row[0].lease_epoch > epoch and (row[0].lease_owner or "") != owner:
                    fenced.taken_over_by, fenced.new_epoch = row[0].lease_owner, row[0].lease_epoch
                    fenced.taken_at = datetime.now(UTC)
                    break
                time.sleep(0.2)
            if fenced.taken_over_by is None:
                waits = self.db.rows(
                    "SELECT pid, state, wait_event_type, left(query, 60) AS q FROM pg_stat_activity"
                    " WHERE wait_event_type = 'Lock' OR state = 'idle in transaction'"
                )
                raise RuntimeError(f"run {run_id}: nobody took over from frozen {owner}; pg: {waits}")
            if not _stopped(child):  # killed while frozen (a kill that landed late): it never wakes
                log(f"run {run_id}: frozen {owner} was killed before it could wake; round retried")
                return False
            # Let the new holder get going (and possibly record) before the old one wakes up.
            time.sleep(self.rng.uniform(0.2, 1.5))
            self.state.fenced.append(fenced)
            self.state.stops += 1
            log(f"SIGSTOP {owner} epoch {epoch} on run {run_id}; taken over at epoch {fenced.new_epoch}")
            return True
        finally:
            if fenced is not None:
                fenced.woke_at = datetime.now(UTC)
            signal_tree(child, signal.SIGCONT)
            for pid in frozen:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)


def _stopped(pid: int) -> bool:
    """The process exists and is stopped (not dead, not a zombie waiting for its parent)."""
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_STOPPED)
    except psutil.Error:
        return False
