"""No two executions of one run at once, seen from outside the workers: command markers and the
simulators' request times."""

from __future__ import annotations

import itertools

from tests.chaos.checks.record import (
    MIN_SUCCESS_SHARE,
    Check,
    Record,
    at_least,
    min_success,
    problems,
)

Interval = tuple[float, float, int, str]
"""(start, end, phase index, what) of one execution step of a run, seen from outside the worker."""


def _frozen_leftover(r: Record, run_id: int, worker_pid: int, start: float, end: float) -> bool:
    """A command of a frozen holder's execution: it spans the freeze or began before the holder saw
    its lease was gone; such a command runs on in a worktree whose result can no longer be recorded."""
    return any(
        f.run_id == run_id
        and f.pid == worker_pid
        and end >= f.stopped_at.timestamp()
        and start <= (f.woke_at or f.stopped_at).timestamp() + 5
        for f in r.res.state.fenced
    )


def _intervals(r: Record) -> tuple[dict[int, list[Interval]], int]:
    """Each run's commands and validations (from their marker lines) and LLM calls (from the
    simulators' logs); also how many frozen-holder leftovers were set aside."""
    out: dict[int, list[Interval]] = {i: [] for i in r.res.run_ids}
    leftovers = 0
    for k, run_id in enumerate(r.res.run_ids):
        path = r.res.marks / f"chaos-{k}"
        begun: dict[str, tuple[float, int]] = {}
        for line in path.read_text().splitlines() if path.exists() else []:
            tag, at, index, shell, worker = line.split()
            if tag == "B":
                begun[shell] = (float(at), int(index))
            elif shell in begun:  # a command killed with its worker never wrote its end: not counted
                (start, i), end = begun.pop(shell), float(at)
                if _frozen_leftover(r, run_id, int(worker), start, end):
                    leftovers += 1
                else:
                    out[run_id].append((start, end, i, f"command pid {shell}"))
    for a in r.res.answered:
        out[r.res.run_ids[a.run_k]].append((a.received, a.sent, a.phase, f"LLM call {a.request_id}"))
    return out, leftovers


def no_overlap(r: Record) -> Check:
    """Within a run, no two executions overlap in time, seen from outside the workers: the commands'
    own begin/end markers and the simulators' request times."""
    spans, leftovers = _intervals(r)
    bad: list[str] = []
    handovers = 0
    for run_id, items in spans.items():
        items.sort()
        for x, y in itertools.pairwise(items):
            handovers += x[2] != y[2]
        for n, y in enumerate(items[1:], 1):
            x = max(items[:n], key=lambda s: s[1])
            if y[0] < x[1]:
                bad.append(f"run {run_id}: phase {y[2]} {y[3]} began inside phase {x[2]} {x[3]}")
    bad += at_least(handovers, min_success(r, 2), "phase-to-phase handovers observed")
    name = f"no overlapping executions within a run (>= {MIN_SUCCESS_SHARE:.0%} of handovers seen)"
    seen = sum(map(len, spans.values()))
    detail = f"{seen} executions, {handovers} handovers, {leftovers} frozen holders' set aside; "
    return Check(name, not bad, detail + problems(bad))
