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
from tests.chaos.config import PHASE_TERMINAL, REPLAY_EVERY, TERMINAL, ChaosConfig, Db
from workers.workspace import WorkspaceManager

MIN_SUCCESS_SHARE = 0.95
"""Runs that must end DONE_SUCCESS. A run may give up only when one phase's worker was killed on
max_deliveries deliveries in a row; host faults and kills inside git must never fail a run."""

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
    usage_dupes: list[Any]

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
            db.rows(
                "SELECT call_key, count(*) AS n FROM llm_usage_events WHERE run_id = ANY(:ids)"
                " GROUP BY call_key HAVING count(*) > 1",
                ids=ids,
            ),
        )


def _git(repo: Path, *args: str) -> str:
    out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=False)
    return out.stdout.strip() if out.returncode == 0 else ""


def _problems(items: list[str]) -> str:
    return f"{len(items)} problem(s): " + "; ".join(items[:5]) if items else "ok"


def _at_least(n: int, minimum: int, what: str) -> list[str]:
    return [] if n >= minimum else [f"only {n} {what} (< {minimum})"]


def terminal_states(r: Record) -> Check:
    bad = [f"run {i} {run.state}" for i, run in r.runs.items() if run.state not in TERMINAL]
    bad += [
        f"run {i} phase {p.index} {p.state}"
        for i in r.all_ids
        for p in r.by_run[i]
        if p.state not in PHASE_TERMINAL
    ]
    for i in r.res.run_ids:
        run, states = r.runs[i], [p.state for p in r.by_run[i]]
        if run.state == "DONE_SUCCESS" and states != ["COMPLETE"] * len(states):
            bad.append(f"run {i} DONE_SUCCESS with phases {states}")
        if run.state == "DONE_FAILED" and "delivered" not in (run.failure_reason or ""):
            bad.append(f"run {i} failed: {run.failure_reason}")
    ok = sum(r.runs[i].state == "DONE_SUCCESS" for i in r.res.run_ids)
    gave_up = sum(r.runs[i].state == "DONE_FAILED" for i in r.res.run_ids)
    bad += _at_least(ok, int(MIN_SUCCESS_SHARE * len(r.res.run_ids)) or 1, "runs DONE_SUCCESS")
    detail = f"{ok}/{len(r.res.run_ids)} runs DONE_SUCCESS, {gave_up} gave up after max deliveries; "
    return Check("every phase reached exactly one terminal state", not bad, detail + _problems(bad))


def branches(r: Record) -> Check:
    """One commit per completed phase, in order, the recorded ones, none from a frozen holder."""
    bad: list[str] = []
    author = {a.commit_sha: (a.worker, a.lease_epoch) for a in r.attempts if a.commit_sha}
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
            by = author.get(p.commit_sha)
            if any(by == (f.owner, f.epoch) and p.finished_at >= f.stopped_at for f in r.res.state.fenced):
                bad.append(f"run {i} phase {p.index}: commit recorded by frozen holder {by}")
            content = _git(r.res.repo, "show", f"{p.commit_sha}:src/p{p.index}.py")
            if i != r.res.killer_id and not content.endswith(f'-{p.index}"'):
                bad.append(f"run {i} phase {p.index}: unexpected content {content!r}")
    bad += _at_least(compared, int(MIN_SUCCESS_SHARE * 3 * len(r.res.run_ids)), "commits matching the record")
    name = "branches: one commit per completed phase, in order"
    return Check(name, not bad, f"{compared} commits compared; " + _problems(bad))


def fencing(r: Record) -> Check:
    """A frozen, taken-over holder recorded nothing after it was frozen."""
    fenced = r.res.state.fenced
    bad = _at_least(len(fenced), r.res.cfg.stops, "fencing rounds")
    for f in fenced:
        late = [
            a
            for a in r.attempts
            if a.worker == f.owner and a.lease_epoch == f.epoch and a.finished_at >= f.stopped_at
        ]
        if late:
            bad.append(f"run {f.run_id}: {len(late)} attempt(s) of frozen {f.owner} e{f.epoch}")
    name = "fencing: no write from a frozen, taken-over holder"
    return Check(name, not bad, f"{len(fenced)} rounds; " + _problems(bad))


def duplicates(r: Record) -> Check:
    key = lambda a: (a.phase_id, a.number)  # noqa: E731
    bad = [
        f"attempt {k} twice"
        for k, g in itertools.groupby(sorted(r.attempts, key=key), key)
        if len(list(g)) > 1
    ]
    per_phase: dict[int, list[str]] = {}
    for e in r.efficiency:
        per_phase.setdefault(e.phase_id, []).append(e.outcome)
    bad += [f"phase {pid}: efficiency rows {o}" for pid, o in per_phase.items() if len(o) > 1]
    bad += [f"usage {u.call_key} x{u.n}" for u in r.usage_dupes]
    bad += _at_least(len(r.efficiency), len(r.completed), "efficiency rows (one per completed phase)")
    detail = f"{len(r.attempts)} attempts, {len(r.efficiency)} efficiency rows; "
    return Check("no duplicate attempt / usage / efficiency rows", not bad, detail + _problems(bad))


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
    name = "exactly one SUCCESS attempt per completed phase"
    return Check(name, not bad, f"{len(r.completed)} completed phases; " + _problems(bad))


def no_attempt_on_host_faults(r: Record) -> Check:
    """Host faults (and kills inside git) hand phases back: no attempt ever failed for one."""
    spent = [a for a in r.attempts if a.outcome != "SUCCESS" and a.run_id != r.res.killer_id]
    bad = [
        f"run {a.run_id} phase {a.phase_id} #{a.number} {a.outcome}: {(a.failure_reason or '')[:100]!r}"
        for a in spent
    ]
    host = [a for a in spent if any(w in (a.failure_reason or "") for w in HOST_FAULT_WORDS)]
    detail = f"{len(spent)} failed attempts ({len(host)} on host faults); "
    return Check("no attempt spent on a host fault or a kill", not bad, detail + _problems(bad))


def no_overlap(r: Record) -> Check:
    bad = []
    pairs = 0
    for i in r.all_ids:
        spans = sorted((a.started_at, a.finished_at) for a in r.attempts if a.run_id == i)
        for x, y in itertools.pairwise(spans):
            if y[0] < x[1]:
                bad.append(f"run {i}: attempt {x[0]:%T.%f}-{x[1]:%T.%f} overlaps {y[0]:%T.%f}-{y[1]:%T.%f}")
        done = [p for p in r.by_run[i] if p.started_at and p.finished_at]
        for a, b in itertools.pairwise(done):
            pairs += 1
            if b.started_at < a.finished_at:
                bad.append(f"run {i}: phase {b.index} started before phase {a.index} finished")
    bad += _at_least(pairs, int(MIN_SUCCESS_SHARE * 2 * len(r.res.run_ids)), "consecutive phase pairs")
    return Check("no overlapping executions within a run", not bad, f"{pairs} pairs; " + _problems(bad))


def settled(r: Record) -> Check:
    later = Db(r.settings.database_url).rows(
        "SELECT id, state FROM runs WHERE id = ANY(:ids) AND state IN ('QUEUED','RUNNING')", ids=r.all_ids
    )
    bad = [f"run {x.id} {x.state}" for x in later]
    return Check("no run non-terminal after a reconciler period", not bad, _problems(bad))


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
    name = "replayed runs reproduce their source's tree"
    return Check(name, not bad, f"{len(done)}/{len(rep)} replays DONE_SUCCESS; " + _problems(bad))


def full_disk(r: Record) -> Check:
    s = r.res.state
    bad = _at_least(s.disk_handbacks, s.disk_fills, "hand-backs by the full host")
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
    branches,
    fencing,
    duplicates,
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
