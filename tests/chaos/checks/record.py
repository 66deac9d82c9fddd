"""What every check reads (`Record`, loaded once from Postgres), what it returns (`Check`), the
minimums they share, and small helpers."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.settings import Settings
from tests.chaos.batch import BatchResult
from tests.chaos.config import Db

MIN_SUCCESS_SHARE = 0.95
"""Runs that must end DONE_SUCCESS. A run may give up only when one phase's worker was killed on
max_deliveries deliveries in a row; host faults and kills inside git must never fail a run."""


MIN_LLM_CALLS = 5
"""LLM calls the simulators must have answered, so the usage checks cannot pass on none."""


KILL_WINDOW = 5.0
"""Seconds after an answer within which a SIGKILL of its worker explains a call that was never recorded
(the worker records a call in one transaction right after the answer arrives)."""


HOST_FAULT_WORDS = ("provisioning worktree", "refreshing mirror", "worker git/OS error", "workspace disk")
"""Words of a host fault: an attempt whose failure says one of them was spent on the host's fault."""


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Record:
    """What the batch left in Postgres, read once for every check."""

    res: BatchResult
    settings: Settings
    runs: dict[int, Any]
    by_run: dict[int, list[Any]]
    attempts: list[Any]
    efficiency: list[Any]
    usage: list[Any]
    refusals: list[Any]
    """Fenced UPDATEs that matched no row (tests/chaos/evidence.py)."""
    writes: list[Any]
    """Committed row changes of runs, phases and attempts, with their writer (tests/chaos/evidence.py)."""

    @property
    def all_ids(self) -> list[int]:
        return [*self.res.run_ids, self.res.killer_id]

    @property
    def completed(self) -> list[Any]:
        return [p for i in self.res.run_ids for p in self.by_run[i] if p.state == "COMPLETE"]

    @classmethod
    def load(cls, res: BatchResult, settings: Settings) -> Record:
        db = Db(settings.database_url)
        ids = [*res.run_ids, res.killer_id]
        runs = {r.id: r for r in db.rows("SELECT * FROM runs WHERE id = ANY(:ids)", ids=ids)}
        by_run: dict[int, list[Any]] = {}
        for p in db.rows("SELECT * FROM phases WHERE run_id = ANY(:ids) ORDER BY run_id, index", ids=ids):
            by_run.setdefault(p.run_id, []).append(p)
        return cls(
            res,
            settings,
            runs,
            by_run,
            db.rows("SELECT * FROM attempts WHERE run_id = ANY(:ids) ORDER BY started_at", ids=ids),
            db.rows("SELECT * FROM efficiency_metrics WHERE run_id = ANY(:ids)", ids=ids),
            db.rows("SELECT * FROM llm_usage_events WHERE run_id = ANY(:ids)", ids=ids),
            db.rows("SELECT * FROM chaos_refusals ORDER BY at"),
            db.rows("SELECT * FROM chaos_writes WHERE run_id = ANY(:ids) ORDER BY id", ids=ids),
        )


def git_stdout(repo: Path, *args: str) -> str:
    out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=False)
    return out.stdout.strip() if out.returncode == 0 else ""


def problems(items: list[str]) -> str:
    return f"{len(items)} problem(s): " + "; ".join(items[:5]) if items else "ok"


def at_least(n: int, minimum: int, what: str) -> list[str]:
    return [] if n >= minimum else [f"only {n} {what} (< {minimum})"]


def min_success(r: Record, per_run: int = 1) -> int:
    return int(MIN_SUCCESS_SHARE * per_run * len(r.res.run_ids)) or 1


def pid_of(app: str | None) -> int | None:
    """The process of a connection named `<worker>/<pid>` (shared/db.py `name_connections`)."""
    tail = (app or "").rpartition("/")[2]
    return int(tail) if tail.isdigit() else None


def count(items: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in items:
        out[x] = out.get(x, 0) + 1
    return out
