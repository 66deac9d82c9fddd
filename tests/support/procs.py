"""Real processes for fleet tests and benchmarks: `autopack api` and `autopack worker` subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx

from shared.settings import Settings, env_value

AUTOPACK = str(Path(sys.executable).with_name("autopack"))


def settings_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment that makes a child process build exactly these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOPACK_")}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if value is None:
            continue
        env[f"AUTOPACK_{name.upper()}"] = env_value(value)
    env.update(extra)
    return env


class Proc:
    def __init__(self, popen: subprocess.Popen[bytes], log: Path) -> None:
        self.popen = popen
        self.log = log

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        if self.popen.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(10)


def spawn(args: list[str], env: dict[str, str], log: Path, cwd: Path | None = None) -> Proc:
    fh = log.open("wb")
    popen = subprocess.Popen(
        args, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True
    )
    return Proc(popen, log)


@contextmanager
def worker_process(
    settings: Settings,
    name: str,
    logdir: Path,
    concurrency: int | None = None,
    workspace: Path | None = None,
    env: dict[str, str] | None = None,
    named: bool = True,
) -> Iterator[Proc]:
    """A real `autopack worker` (Celery prefork) subprocess; waits until it consumes. `env` adds to
    (or overrides) its environment, e.g. a PATH with tests/support/gitshim.py in front. `named=False`
    leaves out `--hostname` (the worker's default node name); `name` then only names the log."""
    env = settings_env(settings, AUTOPACK_LOG_LEVEL="INFO", **(env or {}))  # readiness: the INFO log
    if workspace is not None:  # a different "host": its own mirrors and worktrees
        env["AUTOPACK_WORKSPACE_DIR"] = str(workspace)
    args = [AUTOPACK, "worker", *(["--hostname", f"{name}@%h"] if named else [])]
    if concurrency:
        args += ["--concurrency", str(concurrency)]
    proc = spawn(args, env, logdir / f"{name}.log")
    try:
        _wait_for(lambda: "ready." in proc.output(), proc, 60, f"worker {name}")
        yield proc
    finally:
        proc.stop()


@contextmanager
def api_process(settings: Settings, port: int, logdir: Path) -> Iterator[str]:
    """A real `autopack api` subprocess; yields its base URL once /health answers."""
    proc = spawn([AUTOPACK, "api", "--port", str(port)], settings_env(settings), logdir / "api.log")
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(f"{url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        _wait_for(healthy, proc, 60, "api")
        yield url
    finally:
        proc.stop()


@contextmanager
def flower_process(settings: Settings, port: int, logdir: Path) -> Iterator[Proc]:
    """A real `autopack flower` subprocess; yields once its auth-exempt /healthcheck answers."""
    proc = spawn(
        [AUTOPACK, "flower", "--port", str(port)],
        settings_env(settings, AUTOPACK_LOG_LEVEL="INFO"),
        logdir / "flower.log",
    )

    def healthy() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthcheck", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        _wait_for(healthy, proc, 60, "flower")
        yield proc
    finally:
        proc.stop()


def _wait_for(check: object, proc: Proc, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.popen.returncode}:\n{proc.output()[-4000:]}")
        if check():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} not ready after {timeout}s:\n{proc.output()[-4000:]}")
