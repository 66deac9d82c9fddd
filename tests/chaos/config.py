"""What the chaos batch runs: its configuration and short timings, the run specs it submits, and a
database reader that survives Postgres restarts."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from shared.settings import Settings

TERMINAL = {"DONE_SUCCESS", "DONE_FAILED", "CANCELLED"}
PHASE_TERMINAL = {"COMPLETE", "FAILED", "SKIPPED", "CANCELLED"}
KILLER_COMMAND = "kill -9 $(ps -o ppid= -p $$)"  # the bash of the command kills its prefork child


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
    git_kills: int = 10
    """Workers SIGKILLed inside a git step (tests/support/gitshim.py), with the git process."""
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


MARK = 'm() {{ echo "$1 $(date +%s.%N) {i} $$ $PPID" >> {marks}/{name}; }}; '
"""Shell prefix of a command that logs `B|E <unix time> <phase index> <shell pid> <worker pid>` lines to
the run's marker file in a test-owned directory (chaos workers run unboxed, and a command's bash is the
worker process's child): executions observed from outside the worker."""


def _marked(marks: Path, name: str, i: int, body: str) -> str:
    return MARK.format(i=i, marks=marks, name=name) + f"m B; {body}; m E"


def run_spec(
    repo: Path, k: int, marks: Path, phases: int = 3, content_of: int | None = None
) -> dict[str, Any]:
    """Run `k` of the batch: deterministic scripted phases, so every commit is checkable. Each command
    and validation logs its start and end to `marks/chaos-<k>` (see `MARK`)."""
    name, c = f"chaos-{k}", k if content_of is None else content_of
    return {
        "repo": str(repo),
        "base_ref": "main",
        "name": name,
        "config": {"builder": "script", "max_attempts": 2, "doctor": False},
        "phases": [
            {
                "name": f"p{i}",
                "goal": f"{LLM_GOAL} run {c} phase {i}: write src/p{i}.py",
                "scope": ["src/"],
                "deliverables": [f"src/p{i}.py"],
                "command": _marked(marks, name, i, f"echo 'R = \"{c}-{i}\"' > src/p{i}.py; sleep 0.3"),
                "validation": [_marked(marks, name, i, "sleep 0.05")],
            }
            for i in range(phases)
        ],
    }


LLM_GOAL = "CHAOS-LLM"
"""Marks an LLM phase's goal: the simulator's router answers `run <k> phase <i>` with the file the
scripted phase would have written (tests/chaos/llm.py)."""

REPLAY_EVERY = 4
"""Every 4th run of the batch replays run 0's recorded changes (builder `replay`): the patch-apply
path an LLM answer takes, without an LLM."""

LLM_SLOTS = (1, 2, 5)
"""Runs k with k % 8 in these ask the LLM simulators for their changes (builder `anthropic`, the real
SDK over HTTP): 3 of every 8 runs (37.5 %), none of them a replay."""


def is_llm(k: int) -> bool:
    return k % 8 in LLM_SLOTS


def batch_spec(repo: Path, k: int, source_id: int, marks: Path) -> dict[str, Any]:
    if is_llm(k):
        spec = run_spec(repo, k, marks)
        spec["config"] = {**spec["config"], "builder": "anthropic"}
        for phase in spec["phases"]:
            del phase["command"]
        return spec
    if k % REPLAY_EVERY != REPLAY_EVERY - 1:
        return run_spec(repo, k, marks)
    spec = run_spec(repo, k, marks, content_of=0)  # the source's phases, so each recorded diff applies
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
