"""Run a shell command in a worktree: time limit, capped output, and an environment without secrets."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

# Secrets the worker holds must never reach code it runs on a user's behalf.
_SECRET_PREFIXES = ("AUTOPACK_", "ANTHROPIC_", "FLOWER_", "POSTGRES_", "AWS_", "PG")


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
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SECRET_PREFIXES)}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra or {})
    return env


def cap(text: str, max_bytes: int) -> str:
    data = text.encode(errors="replace")
    if len(data) <= max_bytes:
        return text
    head = data[: max_bytes // 4].decode(errors="replace")
    tail = data[-(max_bytes - max_bytes // 4) :].decode(errors="replace")
    return f"{head}\n… [{len(data) - max_bytes} bytes cut] …\n{tail}"


def run_command(
    command: str, cwd: Path, *, timeout: float, max_bytes: int, env: Mapping[str, str] | None = None
) -> CommandResult:
    start = time.monotonic()
    # A new session so a timeout kills the whole process group, not just the shell.
    proc = subprocess.Popen(
        ["bash", "-c", command],
        cwd=cwd,
        env=clean_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    timed_out = False
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
    text = out.decode(errors="replace")
    return CommandResult(command, proc.returncode, cap(text, max_bytes), time.monotonic() - start, timed_out)
