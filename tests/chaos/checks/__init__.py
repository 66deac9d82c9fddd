"""The chaos batch's invariants: one function each, reading the database and the repository once.

Every check also requires a minimum of what it checked (runs that succeeded, commits compared, rounds
of fencing, replays), so a batch where most runs failed, or a fault never happened, cannot print PASS.
"""

from __future__ import annotations

from collections.abc import Callable

from shared.settings import Settings
from tests.chaos.batch import BatchResult
from tests.chaos.checks.fencing import no_write_accepted_after_takeover, woken_holders_were_refused
from tests.chaos.checks.host_faults import (
    full_disk,
    git_kills,
    no_attempt_on_host_faults,
    no_worker_exited_alone,
)
from tests.chaos.checks.llm_calls import answered_calls_recorded_once, tokens_add_up
from tests.chaos.checks.overlap import no_overlap
from tests.chaos.checks.record import Check, Record
from tests.chaos.checks.runs import (
    branches,
    efficiency_rows,
    killer,
    one_success,
    replays,
    runs_succeed,
    settled,
    terminal_states,
    worktrees,
)
from tests.chaos.config import REPLAY_EVERY, ChaosConfig, is_llm

CHECKS: list[Callable[[Record], Check]] = [
    terminal_states,
    runs_succeed,
    branches,
    woken_holders_were_refused,
    no_write_accepted_after_takeover,
    answered_calls_recorded_once,
    tokens_add_up,
    efficiency_rows,
    one_success,
    no_attempt_on_host_faults,
    no_worker_exited_alone,
    no_overlap,
    settled,
    worktrees,
    killer,
    replays,
]


def check_invariants(res: BatchResult, settings: Settings) -> list[Check]:
    record = Record.load(res, settings)
    checks = [check(record) for check in CHECKS]
    if res.cfg.disk_fills:
        checks.append(full_disk(record))
    if res.cfg.git_kills:
        checks.append(git_kills(record))
    return checks


def render(checks: list[Check], res: BatchResult, cfg: ChaosConfig) -> str:
    s = res.state
    lines = [
        f"chaos batch: seed {cfg.seed}, {len(res.run_ids)} runs x 3 phases (every {REPLAY_EVERY}th a replay) "
        f"+ 1 worker-killing run, {cfg.workers} workers x {cfg.concurrency}, {res.seconds:.0f}s",
        f"faults: SIGKILL {s.kills}/{cfg.kills}, SIGSTOP+takeover {s.stops}/{cfg.stops}, "
        f"kill inside git {len(s.git_kills)}/{cfg.git_kills}, "
        f"Redis restarts {s.redis_restarts}/{cfg.redis_restarts}, "
        f"Postgres restarts {s.pg_restarts}/{cfg.pg_restarts}, "
        f"disk filled to ENOSPC {s.disk_fills}/{cfg.disk_fills}",
    ]
    llm = [i for k, i in enumerate(res.run_ids) if is_llm(k)]
    lines.append(f"LLM runs on the simulators: {len(llm)}, calls answered: {len(res.answered)}")
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
    done = (s.kills, s.stops, len(s.git_kills), s.redis_restarts, s.pg_restarts, s.disk_fills)
    return done == (cfg.kills, cfg.stops, cfg.git_kills, cfg.redis_restarts, cfg.pg_restarts, cfg.disk_fills)


__all__ = [
    "CHECKS",
    "Check",
    "Record",
    "answered_calls_recorded_once",
    "check_invariants",
    "faults_complete",
    "no_overlap",
    "no_worker_exited_alone",
    "no_write_accepted_after_takeover",
    "render",
    "tokens_add_up",
    "woken_holders_were_refused",
]
