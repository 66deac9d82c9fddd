"""Run a shell command in a worktree: time limit, capped output, and an environment without secrets."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from shared.errors import Drained
from shared.git import scrubbed_env
from workers import drain

_POLL_SECONDS = 0.5


@dataclass(frozen=True)
class CommandResult:
    command: str
    exit_code: int
    output: str
    seconds: float
    timed_out: bool

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    def summary(self) -> str:
        status = "timed out" if self.timed_out else f"exit {self.exit_code}"
        return f"$ {self.command}  ({status}, {self.seconds:.2f}s)\n{self.output}"


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = scrubbed_env()  # secrets the worker holds never reach code it runs on a user's behalf
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra or {})
    return env


def cap(text: str, max_bytes: int) -> str:
    data = text.encode(errors="replace")
    if len(data) <= max_bytes:
        return text
    if max_bytes <= 0:
        return f"… [{len(data)} bytes cut] …"
    head = data[: max_bytes // 4].decode(errors="replace")
    tail = data[-(max_bytes - max_bytes // 4) :].decode(errors="replace")
    return f"{head}\n… [{len(data) - max_bytes} bytes cut] …\n{tail}"


def run_command(
    command: str, cwd: Path, *, timeout: float, max_bytes: int, env: Mapping[str, str] | None = None
) -> CommandResult:
    """Run `command` with bash; when the shell ends (or times out) its whole process group is killed,
    so a backgrounded child can neither outlive the phase nor hold the output pipe open."""
    start = time.monotonic()
    proc = subprocess.Popen(
        ["bash", "-c", command],
        cwd=cwd,
        env=clean_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    chunks: list[bytes] = []
    reader = threading.Thread(target=_read_output, args=(proc, chunks), daemon=True)
    reader.start()
    timed_out = drained = False
    try:
        timed_out, drained = _wait(proc, start + timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        reader.join(timeout=5)
    if drained:
        raise Drained(f"the worker is stopping: `{command}` was stopped when the drain window ended")
    text = b"".join(chunks).decode(errors="replace")
    return CommandResult(command, proc.returncode, cap(text, max_bytes), time.monotonic() - start, timed_out)


def _wait(proc: subprocess.Popen[bytes], until: float) -> tuple[bool, bool]:
    """Wait for the shell: (timed out, drained). A thread blocks in waitpid, so the exit is seen at
    once (Popen.wait(timeout) polls with sleeps of up to 50 ms); the loop wakes every half second
    so a stopping worker can cut a long command."""
    exited = threading.Event()

    def reap() -> None:
        proc.wait()
        exited.set()

    threading.Thread(target=reap, daemon=True).start()
    while not exited.wait(max(0.0, min(_POLL_SECONDS, until - time.monotonic()))):
        if time.monotonic() >= until:
            return True, False
        if drain.overdue():
            return False, True
    return False, False


def _read_output(proc: subprocess.Popen[bytes], chunks: list[bytes]) -> None:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
