"""Redis, Postgres and a small disk, as the chaos batch starts, restarts and fills them (needs root)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import redis
import sqlalchemy as sa

from tests.chaos.config import ChaosConfig

REDIS_START = [
    "redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", "6379",
    "--save", "", "--appendonly", "no", "--dir", "/var/lib/redis", "--logfile", "/var/log/redis/ci.log",
]  # fmt: skip


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
