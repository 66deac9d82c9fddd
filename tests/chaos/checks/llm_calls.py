"""LLM accounting against the simulators' own logs: every answered call recorded exactly once, and
tokens used = settled budget = efficiency rows."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tests.chaos.checks.record import (
    KILL_WINDOW,
    MIN_LLM_CALLS,
    Check,
    Record,
    at_least,
    count,
    problems,
)
from tests.chaos.llm import USAGE, Answered


@dataclass(frozen=True)
class Charge:
    """The reconciler charged run `run_id` the reservation of a call made under `epoch` (its holder
    died or froze mid-call): `charge_orphaned` moves reserved to spent and the epoch on, in one change."""

    run_id: int
    epoch: int
    at: datetime
    tokens: int


def _orphan_charges(r: Record) -> list[Charge]:
    out = []
    for w in r.writes:
        moved = w.tbl == "runs" and w.old_reserved and not w.new_reserved
        if moved and w.new_epoch == w.old_epoch + 1 and w.new_spent - w.old_spent == w.old_reserved:
            out.append(Charge(w.run_id, w.old_epoch, w.at, w.old_reserved))
    return out


def _charged(r: Record) -> dict[int, int]:
    out: dict[int, int] = {}
    for c in _orphan_charges(r):
        out[c.run_id] = out.get(c.run_id, 0) + c.tokens
    return out


def _settle_refused(u: Any, charges: list[Charge]) -> bool:
    """A usage row written after its epoch's reservation was charged: a frozen holder woke, recorded
    what the call used (the money was spent) and its settle was fenced off, so the ledger keeps the
    charged worst case for that call instead (shared/budget.py)."""
    epoch = _EPOCH.search(u.call_key or "")
    return epoch is not None and any(
        c.run_id == u.run_id and c.epoch == int(epoch.group(1)) and u.created_at > c.at for c in charges
    )


_EPOCH = re.compile(r":e(\d+):")


def _killed_before_recording(r: Record, a: Answered) -> bool:
    """Its worker was SIGKILLed, or Redis restarted (a worker that loses the broker cancels its running
    tasks: Celery SIGTERMs their processes), between the request's arrival and KILL_WINDOW after the
    answer."""
    deaths = [t for n, t in r.res.state.kill_log if n == a.worker] + r.res.state.redis_restart_times
    return any(a.received - 0.5 <= t <= a.sent + KILL_WINDOW for t in deaths)


def answered_calls_recorded_once(r: Record) -> Check:
    """Every request a simulator answered has exactly one usage row (by its request id). One without is
    the honest exception only if its worker was killed before it could record, the reconciler then
    charged its run the call's reservation, and its phase was delivered again."""
    recorded = count([u.request_id for u in r.usage])
    answered = {a.request_id: a for a in r.res.answered}
    bad = [f"{rid} recorded {n} times" for rid, n in recorded.items() if n > 1]
    bad += [f"usage row {rid} answered by no simulator" for rid in recorded if rid not in answered]
    lost = [a for a in answered.values() if a.request_id not in recorded]
    charged = _charged(r)
    for a in lost:
        where = f"{a.request_id} (run k{a.run_k} phase {a.phase} on {a.worker})"
        if not _killed_before_recording(r, a):
            bad.append(f"{where}: answered, never recorded, its worker was neither killed nor cancelled")
        elif not charged.get(r.res.run_ids[a.run_k]):
            bad.append(f"{where}: lost to a kill, but its run was never charged the reservation")
        elif r.by_run[r.res.run_ids[a.run_k]][a.phase].deliveries < 2:
            bad.append(f"{where}: lost to a kill, but its phase was never delivered again")
    bad += at_least(len(answered), MIN_LLM_CALLS, "answered LLM calls")
    name = f"every answered LLM call recorded exactly once (>= {MIN_LLM_CALLS} calls)"
    detail = f"{len(answered)} answered, {len(r.usage)} usage rows, {len(lost)} lost to a kill; "
    return Check(name, not bad, detail + problems(bad))


def tokens_add_up(r: Record) -> Check:
    """Per run: tokens_spent = its usage rows' tokens + what the reconciler charged for killed calls
    (a call both charged and recorded late counts once, as its charge), nothing left reserved; per
    phase: the efficiency row's tokens = its usage rows' tokens."""
    by_run: dict[int, int] = {}
    by_phase: dict[int, int] = {}
    charges = _orphan_charges(r)
    for u in r.usage:
        used = (u.input_tokens or 0) + (u.output_tokens or 0)
        by_phase[u.phase_id] = by_phase.get(u.phase_id, 0) + used
        if not _settle_refused(u, charges):
            by_run[u.run_id] = by_run.get(u.run_id, 0) + used
    charged = _charged(r)
    bad = [
        f"run {i}: {r.runs[i].tokens_reserved} tokens still reserved"
        for i in r.all_ids
        if r.runs[i].tokens_reserved
    ]
    for i in r.all_ids:
        want = by_run.get(i, 0) + charged.get(i, 0)
        if r.runs[i].tokens_spent != want:
            used, paid = by_run.get(i, 0), charged.get(i, 0)
            bad.append(f"run {i}: spent {r.runs[i].tokens_spent} != usage {used} + charged {paid}")
    bad += [
        f"phase {e.phase_id}: efficiency {e.tokens_spent} != usage {by_phase.get(e.phase_id, 0)}"
        for e in r.efficiency
        if (e.tokens_spent or 0) != by_phase.get(e.phase_id, 0)
    ]
    total = sum(by_run.values())
    bad += at_least(total, MIN_LLM_CALLS * sum(USAGE.values()), "tokens in usage rows")
    name = f"tokens: usage = settled budget = efficiency rows (>= {MIN_LLM_CALLS} calls' worth)"
    detail = f"{total} tokens used, {sum(charged.values())} charged for killed calls; "
    return Check(name, not bad, detail + problems(bad))
