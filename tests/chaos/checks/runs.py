"""Runs, phases and branches: terminal states, success shares, one commit and one SUCCESS per phase,
efficiency rows, settling, worktrees, the worker-killing run and replays."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.chaos.checks.record import (
    MIN_SUCCESS_SHARE,
    Check,
    Record,
    at_least,
    git_stdout,
    min_success,
    problems,
)
from tests.chaos.config import PHASE_TERMINAL, REPLAY_EVERY, TERMINAL, Db
from workers.workspace import WorkspaceManager


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
    bad += at_least(n, r.res.cfg.runs + 1, "runs (the batch's and the worker-killing one)")
    name = "every run and phase terminal; DONE_SUCCESS only with every phase COMPLETE"
    return Check(name, not bad, f"{n} runs; " + problems(bad))


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
    bad += at_least(ok, min_success(r), "runs DONE_SUCCESS")
    name = f"runs succeed (>= {MIN_SUCCESS_SHARE:.0%}); failures only after max deliveries"
    detail = f"{ok}/{len(r.res.run_ids)} DONE_SUCCESS, {len(gave_up)} gave up; "
    return Check(name, not bad, detail + problems(bad))


def branches(r: Record) -> Check:
    """One commit per completed phase, in order, the recorded ones, with the content the phase wrote."""
    bad: list[str] = []
    compared = 0
    for i in r.all_ids:
        run, done = r.runs[i], [p for p in r.by_run[i] if p.state == "COMPLETE"]
        log_out = git_stdout(
            r.res.repo, "log", "--reverse", "--format=%H %s", f"{run.base_sha}..autopack/run-{i}"
        )
        got = [line.split(" ", 1) for line in log_out.splitlines()]
        want = [[p.commit_sha, f"autopack: run {i} phase {p.index} {p.name}"] for p in done]
        if got != want:
            bad.append(f"run {i}: branch {[g[1] for g in got]} != recorded {[w[1] for w in want]}")
        compared += len(got) if got == want else 0
        if done and run.head_sha != done[-1].commit_sha:
            bad.append(f"run {i}: head {run.head_sha[:8]} is not the last phase commit")
        for p in done:
            content = git_stdout(r.res.repo, "show", f"{p.commit_sha}:src/p{p.index}.py")
            if i != r.res.killer_id and not content.endswith(f'-{p.index}"'):
                bad.append(f"run {i} phase {p.index}: unexpected content {content!r}")
    bad += at_least(compared, min_success(r, 3), "commits matching the record")
    name = f"branches: one commit per completed phase, in order (>= {MIN_SUCCESS_SHARE:.0%} compared)"
    return Check(name, not bad, f"{compared} commits compared; " + problems(bad))


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
    bad += at_least(len(r.completed), min_success(r, 3), "completed phases")
    name = "one efficiency row per ended phase"
    return Check(name, not bad, f"{len(r.efficiency)} rows, {len(ended)} ended phases; " + problems(bad))


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
    bad += at_least(len(r.completed), min_success(r, 3), "completed phases")
    name = f"exactly one SUCCESS attempt per completed phase (>= {MIN_SUCCESS_SHARE:.0%} completed)"
    return Check(name, not bad, f"{len(r.completed)} completed phases; " + problems(bad))


def settled(r: Record) -> Check:
    later = Db(r.settings.database_url).rows(
        "SELECT id, state FROM runs WHERE id = ANY(:ids) AND state IN ('QUEUED','RUNNING')", ids=r.all_ids
    )
    bad = [f"run {x.id} {x.state}" for x in later]
    bad += at_least(len(r.all_ids), r.res.cfg.runs + 1, "runs re-read")
    return Check(
        "no run non-terminal after a reconciler period", not bad, f"{len(r.all_ids)} runs; " + problems(bad)
    )


def worktrees(r: Record) -> Check:
    """After pruning, each mirror's worktree list matches the slot directories on disk."""
    bad = []
    n_wt = 0
    for ws in r.res.workspaces:
        WorkspaceManager(ws, r.settings.worktrees_per_repo).prune()
        for mirror in sorted((ws / "mirrors").glob("*.git")):
            listing = git_stdout(mirror, "worktree", "list", "--porcelain")
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
    bad += at_least(n_wt, len(r.res.workspaces), "worktrees (one host each at least)")
    return Check("no leaked worktrees after pruning", not bad, f"{n_wt} worktrees; " + problems(bad))


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
    return Check(name, not bad, f"reason: {kp[0].failure_reason!r}; " + problems(bad))


def replays(r: Record) -> Check:
    """A replayed run re-applies its source's recorded changes: the same tree."""
    source = r.runs[r.res.run_ids[0]]
    rep = [r.runs[i] for i in r.res.run_ids if (r.runs[i].config or {}).get("builder") == "replay"]
    want = git_stdout(r.res.repo, "rev-parse", f"{source.head_sha}^{{tree}}")
    done = [x for x in rep if x.state == "DONE_SUCCESS"]
    bad = [
        f"run {x.id}: tree differs from source run {source.id}"
        for x in done
        if git_stdout(r.res.repo, "rev-parse", f"{x.head_sha}^{{tree}}") != want
    ]
    bad += at_least(len(rep), len(r.res.run_ids) // REPLAY_EVERY, "replayed runs")
    bad += at_least(len(done), int(MIN_SUCCESS_SHARE * len(rep)) or 1, "replays DONE_SUCCESS")
    name = f"replayed runs reproduce their source's tree (>= {MIN_SUCCESS_SHARE:.0%} of them DONE_SUCCESS)"
    return Check(name, not bad, f"{len(done)}/{len(rep)} replays DONE_SUCCESS; " + problems(bad))
