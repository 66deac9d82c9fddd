"""Fencing, judged from the database's own record (tests/chaos/evidence.py): a woken, taken-over holder
attempted writes and each was refused; nothing it committed later touched its run under the old lease."""

from __future__ import annotations

from typing import Any

from tests.chaos.checks.record import (
    Check,
    Record,
    at_least,
    pid_of,
    problems,
)
from tests.chaos.faults import Fenced


def woken_holders_were_refused(r: Record) -> Check:
    """Each frozen, taken-over holder tried a fenced write after it woke, and Postgres matched no row
    (the refusals trigger of tests/chaos/evidence.py saw it from the holder's own connection)."""
    bad: list[str] = []
    seen = 0
    for f in r.res.state.fenced:
        woke = f.woke_at
        refused = [x for x in r.refusals if woke and pid_of(x.app) == f.pid and x.at >= woke]
        seen += bool(refused)
        if not refused:
            bad.append(f"run {f.run_id}: no refused write from {f.owner} after it woke")
    bad += at_least(seen, r.res.cfg.stops, "takeovers with a refused write")
    name = f"fencing: a woken, taken-over holder's writes are refused (>= {r.res.cfg.stops})"
    detail = f"{seen}/{len(r.res.state.fenced)} takeovers, {len(r.refusals)} refusals in all; "
    return Check(name, not bad, detail + problems(bad))


def _under_old_lease(rows: list[Any], f: Fenced) -> bool:
    """A transaction of the frozen holder's process counts as its own later lease only if a run-row
    change in it names an owner token of that process other than the frozen one (owner tokens are
    `host/pid/nonce`); a change naming the frozen token, another process's token (a write that slipped
    past the fence into the new holder's lease) or no token at all is the old holder's."""
    tokens = {o for w in rows if w.tbl == "runs" for o in (w.old_owner, w.new_owner) if o}
    if f.owner in tokens:
        return True
    return not any(t.split("/")[1:2] == [str(f.pid)] for t in tokens)


def no_write_accepted_after_takeover(r: Record) -> Check:
    """Nothing the frozen holder's process committed after the takeover touched its run, except under a
    lease it took later itself (a transaction whose run-row change names another owner token)."""
    bad: list[str] = []
    checked = 0
    for f in r.res.state.fenced:
        taken = f.taken_at
        late = [
            w for w in r.writes if taken and w.run_id == f.run_id and pid_of(w.app) == f.pid and w.at >= taken
        ]
        for xid in sorted({w.xid for w in late}):
            rows = [w for w in late if w.xid == xid]
            checked += 1
            if _under_old_lease(rows, f):
                what = [(w.tbl, w.old_owner, w.new_owner, w.old_epoch, w.new_epoch) for w in rows]
                bad.append(f"run {f.run_id}: {f.owner} committed {what} at {rows[0].at:%T.%f}")
    bad += at_least(sum(f.taken_at is not None for f in r.res.state.fenced), r.res.cfg.stops, "takeovers")
    name = f"fencing: no write accepted from a taken-over holder (>= {r.res.cfg.stops} takeovers)"
    return Check(name, not bad, f"{checked} later transactions of those processes; " + problems(bad))
