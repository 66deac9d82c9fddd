"""The chaos batch's invariants: one function each, reading the database and the repository once.

Every check also requires a minimum of what it checked (runs that succeeded, commits compared, rounds
of fencing, replays), so a batch where most runs failed, or a fault never happened, cannot print PASS.
"""

from __future__ import annotations

import itertools
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.settings import Settings
from tests.chaos.batch import BatchResult
from tests.chaos.config import PHASE_TERMINAL, REPLAY_EVERY, TERMINAL, ChaosConfig, Db, is_llm
from tests.chaos.faults import Fenced
from tests.chaos.llm import USAGE, Answered
from workers.workspace import WorkspaceManager

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


def _git(repo: Path, *args: str) -> str:
    out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=False)
    return out.stdout.strip() if out.returncode == 0 else ""


def _problems(items: list[str]) -> str:
    return f"{len(items)} problem(s): " + "; ".join(items[:5]) if items else "ok"


def _at_least(n: int, minimum: int, what: str) -> list[str]:
    return [] if n >= minimum else [f"only {n} {what} (< {minimum})"]


def _min_success(r: Record, per_run: int = 1) -> int:
    return int(MIN_SUCCESS_SHARE * per_run * len(r.res.run_ids)) or 1


def _pid_of(app: str | None) -> int | None:
    """The process of a connection named `<worker>/<pid>` (shared/db.py `name_connections`)."""
    tail = (app or "").rpartition("/")[2]
    return int(tail) if tail.isdigit() else None


def terminal_states(r: Record) -> Check:
    bad = [f"run {i} {run.state}" for i, run in r.runs.items() if run.state not in TERMINAL]
    bad += [
        f"run {i} phase {p.index} {p.state}"
        for i in r.all_ids
        for p in r.by_run[i]
        if p.state not in PHASE_TERMINAL
    ]
    for i in r.res.run_ids:
        states = [p.state for p in r.by_run[i]]
        if r.runs[i].state == "DONE_SUCCESS" and states != ["COMPLETE"] * len(states):
            bad.append(f"run {i} DONE_SUCCESS with phases {states}")
    n = len(r.all_ids)
    bad += _at_least(n, r.res.cfg.runs + 1, "runs (the batch's and the worker-killing one)")
    name = "every run and phase terminal; DONE_SUCCESS only with every phase COMPLETE"
    return Check(name, not bad, f"{n} runs; " + _problems(bad))


def _gave_up(r: Record, i: int) -> bool:
    """The run failed because one phase's worker died on every one of its max deliveries."""
    limit = r.settings.max_deliveries
    return "delivered" in (r.runs[i].failure_reason or "") and any(
        p.state == "FAILED" and p.deliveries == limit + 1 and "delivered" in (p.failure_reason or "")
        for p in r.by_run[i]
    )


def runs_succeed(r: Record) -> Check:
    """Runs end DONE_SUCCESS; one may fail only by giving up after max deliveries of one phase."""
    failed = [i for i in r.res.run_ids if r.runs[i].state != "DONE_SUCCESS"]
    gave_up = [i for i in failed if _gave_up(r, i)]
    bad = [f"run {i} {r.runs[i].state}: {r.runs[i].failure_reason}" for i in failed if i not in gave_up]
    ok = len(r.res.run_ids) - len(failed)
    bad += _at_least(ok, _min_success(r), "runs DONE_SUCCESS")
    name = f"runs succeed (>= {MIN_SUCCESS_SHARE:.0%}); failures only after max deliveries"
    detail = f"{ok}/{len(r.res.run_ids)} DONE_SUCCESS, {len(gave_up)} gave up; "
    return Check(name, not bad, detail + _problems(bad))


def branches(r: Record) -> Check:
    """One commit per completed phase, in order, the recorded ones, with the content the phase wrote."""
    bad: list[str] = []
    compared = 0
    for i in r.all_ids:
        run, done = r.runs[i], [p for p in r.by_run[i] if p.state == "COMPLETE"]
        log_out = _git(r.res.repo, "log", "--reverse", "--format=%H %s", f"{run.base_sha}..autopack/run-{i}")
        got = [line.split(" ", 1) for line in log_out.splitlines()]
        want = [[p.commit_sha, f"autopack: run {i} phase {p.index} {p.name}"] for p in done]
        if got != want:
            bad.append(f"run {i}: branch {[g[1] for g in got]} != recorded {[w[1] for w in want]}")
        compared += len(got) if got == want else 0
        if done and run.head_sha != done[-1].commit_sha:
            bad.append(f"run {i}: head {run.head_sha[:8]} is not the last phase commit")
        for p in done:
            content = _git(r.res.repo, "show", f"{p.commit_sha}:src/p{p.index}.py")
            if i != r.res.killer_id and not content.endswith(f'-{p.index}"'):
                bad.append(f"run {i} phase {p.index}: unexpected content {content!r}")
    bad += _at_least(compared, _min_success(r, 3), "commits matching the record")
    name = f"branches: one commit per completed phase, in order (>= {MIN_SUCCESS_SHARE:.0%} compared)"
    return Check(name, not bad, f"{compared} commits compared; " + _problems(bad))


def woken_holders_were_refused(r: Record) -> Check:
    """Each frozen, taken-over holder tried a fenced write after it woke, and Postgres matched no row
    (the refusals trigger of tests/chaos/evidence.py saw it from the holder's own connection)."""
    bad: list[str] = []
    seen = 0
    for f in r.res.state.fenced:
        woke = f.woke_at
        refused = [x for x in r.refusals if woke and _pid_of(x.app) == f.pid and x.at >= woke]
        seen += bool(refused)
        if not refused:
            bad.append(f"run {f.run_id}: no refused write from {f.owner} after it woke")
    bad += _at_least(seen, r.res.cfg.stops, "takeovers with a refused write")
    name = f"fencing: a woken, taken-over holder's writes are refused (>= {r.res.cfg.stops})"
    detail = f"{seen}/{len(r.res.state.fenced)} takeovers, {len(r.refusals)} refusals in all; "
    return Check(name, not bad, detail + _problems(bad))


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
            w
            for w in r.writes
            if taken and w.run_id == f.run_id and _pid_of(w.app) == f.pid and w.at >= taken
        ]
        for xid in sorted({w.xid for w in late}):
            rows = [w for w in late if w.xid == xid]
            checked += 1
            if _under_old_lease(rows, f):
                what = [(w.tbl, w.old_owner, w.new_owner, w.old_epoch, w.new_epoch) for w in rows]
                bad.append(f"run {f.run_id}: {f.owner} committed {what} at {rows[0].at:%T.%f}")
    bad += _at_least(sum(f.taken_at is not None for f in r.res.state.fenced), r.res.cfg.stops, "takeovers")
    name = f"fencing: no write accepted from a taken-over holder (>= {r.res.cfg.stops} takeovers)"
    return Check(name, not bad, f"{checked} later transactions of those processes; " + _problems(bad))


def _orphan_charges(r: Record) -> dict[int, int]:
    """Tokens the reconciler charged per run for reservations a dead holder left (`charge_orphaned`:
    reserved moves to spent and the epoch moves on, in one row change)."""
    out: dict[int, int] = {}
    for w in r.writes:
        moved = w.tbl == "runs" and w.old_reserved and not w.new_reserved
        if moved and w.new_epoch == w.old_epoch + 1 and w.new_spent - w.old_spent == w.old_reserved:
            out[w.run_id] = out.get(w.run_id, 0) + w.old_reserved
    return out


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
    recorded = _count([u.request_id for u in r.usage])
    answered = {a.request_id: a for a in r.res.answered}
    bad = [f"{rid} recorded {n} times" for rid, n in recorded.items() if n > 1]
    bad += [f"usage row {rid} answered by no simulator" for rid in recorded if rid not in answered]
    lost = [a for a in answered.values() if a.request_id not in recorded]
    charged = _orphan_charges(r)
    for a in lost:
        where = f"{a.request_id} (run k{a.run_k} phase {a.phase} on {a.worker})"
        if not _killed_before_recording(r, a):
            bad.append(f"{where}: answered, never recorded, its worker was neither killed nor cancelled")
        elif not charged.get(r.res.run_ids[a.run_k]):
            bad.append(f"{where}: lost to a kill, but its run was never charged the reservation")
        elif r.by_run[r.res.run_ids[a.run_k]][a.phase].deliveries < 2:
            bad.append(f"{where}: lost to a kill, but its phase was never delivered again")
    bad += _at_least(len(answered), MIN_LLM_CALLS, "answered LLM calls")
    name = f"every answered LLM call recorded exactly once (>= {MIN_LLM_CALLS} calls)"
    detail = f"{len(answered)} answered, {len(r.usage)} usage rows, {len(lost)} lost to a kill; "
    return Check(name, not bad, detail + _problems(bad))


def tokens_add_up(r: Record) -> Check:
    """Per run: tokens_spent = its usage rows' tokens + what the reconciler charged for killed calls,
    nothing left reserved; per phase: the efficiency row's tokens = its usage rows' tokens."""
    by_run: dict[int, int] = {}
    by_phase: dict[int, int] = {}
    for u in r.usage:
        by_run[u.run_id] = by_run.get(u.run_id, 0) + (u.input_tokens or 0) + (u.output_tokens or 0)
        by_phase[u.phase_id] = by_phase.get(u.phase_id, 0) + (u.input_tokens or 0) + (u.output_tokens or 0)
    charged = _orphan_charges(r)
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
    bad += _at_least(total, MIN_LLM_CALLS * sum(USAGE.values()), "tokens in usage rows")
    name = f"tokens: usage = settled budget = efficiency rows (>= {MIN_LLM_CALLS} calls' worth)"
    detail = f"{total} tokens used, {sum(charged.values())} charged for killed calls; "
    return Check(name, not bad, detail + _problems(bad))


def efficiency_rows(r: Record) -> Check:
    """Every terminal phase has exactly one efficiency row (the transaction that ends it writes it)."""
    per_phase: dict[int, list[str]] = {}
    for e in r.efficiency:
        per_phase.setdefault(e.phase_id, []).append(e.outcome)
    ended = [p for i in r.all_ids for p in r.by_run[i] if p.state in ("COMPLETE", "FAILED")]
    bad = [f"phase {pid}: efficiency rows {o}" for pid, o in per_phase.items() if len(o) > 1]
    bad += [
        f"run {p.run_id} phase {p.index} {p.state}: no efficiency row" for p in ended if p.id not in per_phase
    ]
    bad += _at_least(len(r.completed), _min_success(r, 3), "completed phases")
    name = "one efficiency row per ended phase"
    return Check(name, not bad, f"{len(r.efficiency)} rows, {len(ended)} ended phases; " + _problems(bad))


def one_success(r: Record) -> Check:
    """Every completed phase has exactly one SUCCESS attempt: a takeover adopts its predecessor's
    recorded success and never redoes it, and no kill or host fault costs the phase a second try."""
    succ: dict[int, list[Any]] = {}
    for a in r.attempts:
        if a.outcome == "SUCCESS":
            succ.setdefault(a.phase_id, []).append(a)
    bad = [f"phase {pid}: {len(xs)} SUCCESS attempts" for pid, xs in succ.items() if len(xs) > 1]
    bad += [
        f"run {p.run_id} phase {p.index}: COMPLETE without a SUCCESS" for p in r.completed if p.id not in succ
    ]
    bad += _at_least(len(r.completed), _min_success(r, 3), "completed phases")
    name = f"exactly one SUCCESS attempt per completed phase (>= {MIN_SUCCESS_SHARE:.0%} completed)"
    return Check(name, not bad, f"{len(r.completed)} completed phases; " + _problems(bad))


def no_attempt_on_host_faults(r: Record) -> Check:
    """Host faults (and kills inside git) hand phases back: no attempt ever failed for one."""
    spent = [a for a in r.attempts if a.outcome != "SUCCESS" and a.run_id != r.res.killer_id]
    bad = [
        f"run {a.run_id} phase {a.phase_id} #{a.number} {a.outcome}: {(a.failure_reason or '')[:100]!r}"
        for a in spent
    ]
    s, cfg = r.res.state, r.res.cfg
    faults = s.kills + len(s.git_kills) + s.disk_fills
    bad += _at_least(faults, cfg.kills + cfg.git_kills + cfg.disk_fills, "kills and host faults injected")
    bad += _at_least(len(r.attempts), len(r.completed), "attempts (one per completed phase)")
    detail = f"{len(spent)} failed attempts over {faults} kills and host faults; "
    return Check(
        "no attempt spent on a host fault or a kill (every one planned injected)",
        not bad,
        detail + _problems(bad),
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
    bad += _at_least(handovers, _min_success(r, 2), "phase-to-phase handovers observed")
    name = f"no overlapping executions within a run (>= {MIN_SUCCESS_SHARE:.0%} of handovers seen)"
    seen = sum(map(len, spans.values()))
    detail = f"{seen} executions, {handovers} handovers, {leftovers} frozen holders' set aside; "
    return Check(name, not bad, detail + _problems(bad))


def settled(r: Record) -> Check:
    later = Db(r.settings.database_url).rows(
        "SELECT id, state FROM runs WHERE id = ANY(:ids) AND state IN ('QUEUED','RUNNING')", ids=r.all_ids
    )
    bad = [f"run {x.id} {x.state}" for x in later]
    bad += _at_least(len(r.all_ids), r.res.cfg.runs + 1, "runs re-read")
    return Check(
        "no run non-terminal after a reconciler period", not bad, f"{len(r.all_ids)} runs; " + _problems(bad)
    )


def worktrees(r: Record) -> Check:
    """After pruning, each mirror's worktree list matches the slot directories on disk."""
    bad = []
    n_wt = 0
    for ws in r.res.workspaces:
        WorkspaceManager(ws, r.settings.worktrees_per_repo).prune()
        for mirror in sorted((ws / "mirrors").glob("*.git")):
            listing = _git(mirror, "worktree", "list", "--porcelain")
            listed = {
                Path(line.split(" ", 1)[1]).resolve()
                for line in listing.splitlines()
                if line.startswith("worktree ")
            } - {mirror.resolve()}
            on_disk = {p.resolve() for p in (ws / "worktrees" / mirror.stem).glob("slot-*") if p.is_dir()}
            n_wt += len(on_disk)
            if listed != on_disk:
                only = sorted(map(str, listed - on_disk)), sorted(map(str, on_disk - listed))
                bad.append(f"{ws.name}: listed-only {only[0]}, disk-only {only[1]}")
            if "locked" in listing:
                bad.append(f"{ws.name}: a locked worktree record survived pruning")
            if len(on_disk) > r.settings.worktrees_per_repo:
                bad.append(f"{ws.name}: {len(on_disk)} worktrees > pool size {r.settings.worktrees_per_repo}")
    bad += _at_least(n_wt, len(r.res.workspaces), "worktrees (one host each at least)")
    return Check("no leaked worktrees after pruning", not bad, f"{n_wt} worktrees; " + _problems(bad))


def killer(r: Record) -> Check:
    """The phase that kills its worker every time ends FAILED after bounded deliveries, with the reason."""
    kp, kr, limit = r.by_run[r.res.killer_id], r.runs[r.res.killer_id], r.settings.max_deliveries
    bad = []
    if kr.state != "DONE_FAILED" or kp[0].state != "FAILED":
        bad.append(f"run {kr.state}, phase {kp[0].state}")
    if kp[0].deliveries != limit + 1:  # the last delivery only records the failure
        bad.append(f"deliveries {kp[0].deliveries} != {limit + 1}")
    if "delivered" not in (kp[0].failure_reason or ""):
        bad.append(f"reason {kp[0].failure_reason!r}")
    if kp[1].state != "SKIPPED":
        bad.append(f"next phase {kp[1].state}")
    name = f"worker-killing phase FAILED after {limit} deliveries"
    return Check(name, not bad, f"reason: {kp[0].failure_reason!r}; " + _problems(bad))


def replays(r: Record) -> Check:
    """A replayed run re-applies its source's recorded changes: the same tree."""
    source = r.runs[r.res.run_ids[0]]
    rep = [r.runs[i] for i in r.res.run_ids if (r.runs[i].config or {}).get("builder") == "replay"]
    want = _git(r.res.repo, "rev-parse", f"{source.head_sha}^{{tree}}")
    done = [x for x in rep if x.state == "DONE_SUCCESS"]
    bad = [
        f"run {x.id}: tree differs from source run {source.id}"
        for x in done
        if _git(r.res.repo, "rev-parse", f"{x.head_sha}^{{tree}}") != want
    ]
    bad += _at_least(len(rep), len(r.res.run_ids) // REPLAY_EVERY, "replayed runs")
    bad += _at_least(len(done), int(MIN_SUCCESS_SHARE * len(rep)) or 1, "replays DONE_SUCCESS")
    name = f"replayed runs reproduce their source's tree (>= {MIN_SUCCESS_SHARE:.0%} of them DONE_SUCCESS)"
    return Check(name, not bad, f"{len(done)}/{len(rep)} replays DONE_SUCCESS; " + _problems(bad))


def full_disk(r: Record) -> Check:
    s = r.res.state
    bad = _at_least(s.disk_handbacks, r.res.cfg.disk_fills, "hand-backs by the full host")
    detail = f"{s.disk_handbacks} hand-back(s) over {s.disk_fills} fill(s); "
    return Check("a full disk hands phases back, spending no attempt", not bad, detail + _problems(bad))


def git_kills(r: Record) -> Check:
    s = r.res.state
    bad = _at_least(len(s.git_kills), r.res.cfg.git_kills, "kills inside git")
    bad += _at_least(len(s.first_use_kills), min(len(r.res.workspaces), 2), "kills inside clone/worktree add")
    steps = ", ".join(f"{k} x{n}" for k, n in sorted(_count(s.git_kills + s.first_use_kills).items()))
    return Check(
        "a worker killed inside git loses nothing", not bad, f"steps: {steps or '-'}; " + _problems(bad)
    )


def _count(items: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in items:
        out[x] = out.get(x, 0) + 1
    return out


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
