"""The chaos batch's workers: N restartable `autopack worker` processes, each its own host (its own
workspace), each with tests/support/gitshim.py in front of git so a fault can kill it inside a git step."""

from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import suppress
from pathlib import Path

import psutil

from shared.settings import Settings
from tests.support.gitshim import FIRST_USE_STEPS, GitShim
from tests.support.procs import AUTOPACK, Proc, settings_env, spawn


class Fleet:
    """N restartable `autopack worker` processes, each with its own workspace (a separate host)."""

    def __init__(
        self,
        settings: Settings,
        root: Path,
        n: int,
        concurrency: int,
        small_disk: Path | None = None,
        llm_urls: dict[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.llm_urls = llm_urls or {}
        """Each worker's own Messages simulator, so each answered request names its worker."""
        self.root = root
        self.small_disk = small_disk
        """A tmpfs holding the last worker's workspace, for the disk-full fault."""
        self.concurrency = concurrency
        self.names = [f"w{i}" for i in range(n)]
        self.procs: dict[str, Proc] = {}
        self.incarnation: dict[str, int] = dict.fromkeys(self.names, 0)
        self.shims = {n: GitShim.install(root / f"gitshim-{n}") for n in self.names}
        # A host clones its mirror and adds its worktrees only on first use: kill those steps then.
        for name, step in zip(self.names, FIRST_USE_STEPS, strict=False):
            self.shims[name].kill(step, 0.01)
        self.lock = threading.Lock()
        self.exited: list[str] = []
        """Workers found dead that no fault killed, each with its exit code and last CRITICAL line."""

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
        env = settings_env(self.settings, AUTOPACK_LOG_LEVEL="INFO", **self.shims[name].env())
        env["AUTOPACK_WORKSPACE_DIR"] = str(self.workspace(name))
        env["AUTOPACK_DB_APPLICATION_NAME"] = name  # Postgres names its connections `<name>/<pid>`
        if name in self.llm_urls:
            env["AUTOPACK_ANTHROPIC_BASE_URL"] = self.llm_urls[name]
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
            self.note_exit(name)
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

    def git_kills(self) -> list[str]:
        """The steps of every kill inside git that happened, the first-use ones included."""
        return [step for shim in self.shims.values() for step in shim.fired()]

    def note_exit(self, name: str) -> None:
        """Record it if the worker's current process exited by itself (a broker restart must never
        end a worker: that is what a supervisor would hide)."""
        proc = self.procs[name]
        code = proc.popen.poll()
        if code is None:
            return
        critical = [line for line in proc.output().splitlines() if "CRITICAL" in line]
        self.exited.append(f"{name}#{self.incarnation[name]} exit {code}: {(critical or ['-'])[-1][:160]}")

    def stop_all(self) -> None:
        for name in self.names:
            if name in self.procs:
                self.note_exit(name)
        for proc in self.procs.values():
            proc.stop(signal.SIGKILL, timeout=10)


def signal_tree(pid: int, sig: int) -> list[int]:
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
