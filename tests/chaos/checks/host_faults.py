"""Host faults (kills inside git, a full disk) never spend an attempt."""

from __future__ import annotations

from tests.chaos.checks.record import (
    Check,
    Record,
    at_least,
    count,
    problems,
)


def no_attempt_on_host_faults(r: Record) -> Check:
    """Host faults (and kills inside git) hand phases back: no attempt ever failed for one."""
    spent = [a for a in r.attempts if a.outcome != "SUCCESS" and a.run_id != r.res.killer_id]
    bad = [
        f"run {a.run_id} phase {a.phase_id} #{a.number} {a.outcome}: {(a.failure_reason or '')[:100]!r}"
        for a in spent
    ]
    s, cfg = r.res.state, r.res.cfg
    faults = s.kills + len(s.git_kills) + s.disk_fills
    bad += at_least(faults, cfg.kills + cfg.git_kills + cfg.disk_fills, "kills and host faults injected")
    bad += at_least(len(r.attempts), len(r.completed), "attempts (one per completed phase)")
    detail = f"{len(spent)} failed attempts over {faults} kills and host faults; "
    return Check(
        "no attempt spent on a host fault or a kill (every one planned injected)",
        not bad,
        detail + problems(bad),
    )


def full_disk(r: Record) -> Check:
    s = r.res.state
    bad = at_least(s.disk_handbacks, r.res.cfg.disk_fills, "hand-backs by the full host")
    detail = f"{s.disk_handbacks} hand-back(s) over {s.disk_fills} fill(s); "
    return Check("a full disk hands phases back, spending no attempt", not bad, detail + problems(bad))


def git_kills(r: Record) -> Check:
    s = r.res.state
    bad = at_least(len(s.git_kills), r.res.cfg.git_kills, "kills inside git")
    bad += at_least(len(s.first_use_kills), min(len(r.res.workspaces), 2), "kills inside clone/worktree add")
    steps = ", ".join(f"{k} x{n}" for k, n in sorted(count(s.git_kills + s.first_use_kills).items()))
    return Check(
        "a worker killed inside git loses nothing", not bad, f"steps: {steps or '-'}; " + problems(bad)
    )


def no_worker_exited_alone(r: Record) -> Check:
    """Every worker process that ended was ended by a fault: none died of a Redis or Postgres restart
    (kombu's close path once killed a worker's main process that way, see workers/redis_transport.py)."""
    exited = r.res.state.exited
    return Check(
        "no worker process exited on its own", not exited, f"{len(exited)} exited; " + problems(exited)
    )
