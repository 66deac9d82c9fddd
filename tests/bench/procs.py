"""The raw Celery worker subprocess, and waiting for a subprocess to be ready."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.procs import Proc, spawn

ROOT = Path(__file__).resolve().parents[2]
CELERY = str(Path(sys.executable).with_name("celery"))


def wait_until(check: Callable[[], bool], proc: Proc, timeout: float, what: str) -> None:
    """Poll `check` until it holds; raise with the log's tail if the process dies or it times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.popen.returncode}:\n{proc.output()[-4000:]}")
        if check():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} not ready after {timeout}s:\n{proc.output()[-4000:]}")


@contextmanager
def noop_worker(logdir: Path, redis_url: str, concurrency: int = 2) -> Iterator[Proc]:
    """`celery -A tests.bench.noop_app worker -P prefork -c 2`, consuming once this yields.

    Gossip and mingle are off, as in `autopack worker`: they only slow the start of a lone worker.
    """
    args = [CELERY, "-A", "tests.bench.noop_app", "worker", "-P", "prefork", "-c", str(concurrency)]
    args += ["--loglevel", "INFO", "--without-gossip", "--without-mingle", "--hostname", "bench-noop@%h"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BENCH_REDIS_URL": redis_url}
    proc = spawn(args, env, logdir / "noop-worker.log", cwd=ROOT)
    try:
        wait_until(lambda: "ready." in proc.output(), proc, 60, "celery noop worker")
        yield proc
    finally:
        proc.stop()
