"""What runs beside the tasks in a worker: the reconciler loop, fork hygiene, pruning leftovers, draining."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

from celery import Celery
from celery.signals import worker_process_init, worker_ready, worker_shutdown, worker_shutting_down

from shared import duties
from shared.approvals.store import expire_due
from shared.approvals.webhook import deliver_due
from shared.campaigns.flow import sweep
from shared.db import after_fork, name_connections, transaction
from shared.dispatch import Dispatcher
from shared.errors import BranchConflict
from shared.models import utcnow
from shared.outbox import claim_and_enqueue, lagging_branches, reconcile
from shared.plans.ledger import abandon_stale, longest_call
from shared.runs import fail_on_branch_conflict
from shared.settings import Settings
from workers import drain, retention
from workers.host.guard import HostGuard
from workers.publish import move_branch, phase_ref
from workers.workspace import WorkspaceManager
from workers.workspace.locks import flock
from workers.workspace.mirror import compact_objects, drop_reflogs

log = logging.getLogger(__name__)
RECONCILE_DUTY = "reconcile"
"""The reconciler's database side: every worker's loop wakes each period, one of them does it."""


class Reconciler:
    """Every `reconcile_interval_seconds`, tend this host's mirrors and, in the intervals this worker
    claims for the fleet (`RECONCILE_DUTY`), re-dispatch runs whose next phase has no live task."""

    def __init__(self, settings: Settings, dispatcher: Dispatcher) -> None:
        self.settings = settings
        self.dispatcher = dispatcher
        self.workspace = WorkspaceManager(settings.workspace_dir, settings.worktrees_per_repo)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="autopack-reconciler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def run_once(self, fleet: bool = True) -> int:
        """One pass: this host's upkeep (its mirrors, the local origins it writes), then, when `fleet`,
        the database's side, which is the same for every worker and which the loop does only when it
        claimed the period's pass (shared/duties.py). Returns how many phases it enqueued."""
        s = self.settings
        if fleet:
            self._move_lagging_branches()
        try:
            self.workspace.compact_refs()
            if s.push_results:
                self.workspace.tend_origins()
            self._retain(origins=fleet)
        except Exception as exc:  # a slower push is no reason to stop re-dispatching
            log.warning("packing refs or pruning expired result refs failed: %s", exc)
        if not fleet:
            return 0
        enqueued = reconcile(s.database_url, self.dispatcher, s.redispatch_after_seconds)
        enqueued += self._approvals()
        self._plan_drafts()
        return enqueued + sweep(s.database_url, self.dispatcher)

    def _move_lagging_branches(self) -> None:
        s = self.settings
        for lag in lagging_branches(s.database_url):
            try:
                mirror = self.workspace.mirror(lag.repo)
                mirror.ensure(lag.head)
                drop = None
                if lag.phase_index is not None and lag.epoch is not None:
                    drop = phase_ref(lag.run_id, lag.phase_index, lag.epoch)
                move_branch(s.database_url, mirror.path, lag.run_id, lag.head, s.push_results, drop)
            except BranchConflict as exc:
                self._conflict(lag.run_id, lag.head, exc)
            except Exception as exc:  # an unreachable repo must not stop the re-dispatching below
                log.warning("run %s: result branch still behind: %s", lag.run_id, exc)

    def _plan_drafts(self) -> None:
        """Close the plan drafts whose API process died mid-call, charging what they reserved."""
        s = self.settings
        try:
            with transaction(s.database_url) as session:
                abandoned = abandon_stale(session, utcnow() - longest_call(s))
        except Exception as exc:  # must not stop re-dispatching
            log.warning("plan drafts: %s", exc)
            return
        if abandoned:
            log.warning("plan drafts %s: their API process stopped mid-call; reservations charged", abandoned)

    def _approvals(self) -> int:
        """Apply the timeout's default action to expired approvals (enqueueing their phases), and send
        the approval webhooks that are due. Returns how many phases were enqueued."""
        s = self.settings
        enqueued = 0
        for run_id, phase_id in expire_due(s.database_url):
            log.info("run %s: an approval timed out; its default action applied", run_id)
            enqueued += claim_and_enqueue(s.database_url, self.dispatcher, run_id, phase_id, stale_after=None)
        try:
            deliver_due(s)
        except Exception as exc:  # a webhook receiver's outage must not stop re-dispatching
            log.warning("approval webhooks: %s", exc)
        return enqueued

    def _retain(self, origins: bool = True) -> None:
        """Bounded work per pass: prune the refs of at most `retention_batch` expired runs in their
        origins (`origins`: the fleet's side) and as many in each mirror here (workers/retention.py);
        pack a mirror's loose objects once there are many, and keep its worktrees' reflogs from growing."""
        s = self.settings
        for mirror in retention.mirror_dirs(s.workspace_dir):
            with flock(mirror.with_suffix(".lock"), blocking=False) as held:
                if held is not None:  # busy fetching or adding a worktree: next pass
                    compact_objects(mirror)
                    drop_reflogs(mirror)
        policy = retention.Policy(s.result_branch_retention_days, s.result_branch_retention_runs)
        if not policy.active:
            return
        if origins:
            self._prune_origins(policy)
        for mirror in retention.mirror_dirs(s.workspace_dir):
            retention.prune_mirror(s.database_url, mirror, s.retention_batch)

    def _prune_origins(self, policy: retention.Policy) -> None:
        s = self.settings
        pruned = retention.prune_origins(
            s.database_url, s.workspace_dir, policy, s.retention_batch, s.push_results
        )
        if pruned:
            log.info("retention: pruned the result refs of %d run(s) in their origins", len(pruned))

    def _conflict(self, run_id: int, head: str, exc: BranchConflict) -> None:
        """The recorded head cannot reach the run's branch: retrying would never succeed, so the run
        ends, saying where its result is, instead of waiting forever."""
        reason = (
            f"result branch not moved: {exc}. Another Autopack database (or a person) wrote that branch; "
            f"the result is at {head} in refs/autopack/run-{run_id}/ of the origin"
        )
        with transaction(self.settings.database_url) as session:
            if fail_on_branch_conflict(session, run_id, head, reason):
                log.error("run %s: %s", run_id, reason)

    def _loop(self) -> None:
        s = self.settings
        holder = f"{socket.gethostname()}/{os.getpid()}"
        while not self._stop.wait(s.reconcile_interval_seconds):
            try:
                fleet = duties.claim(s.database_url, RECONCILE_DUTY, s.reconcile_interval_seconds, holder)
                n = self.run_once(fleet)
                if n:
                    log.info("reconciler re-dispatched %d phase(s)", n)
            except Exception as exc:  # a DB or broker outage: say so and try again next period
                log.warning("reconciler pass failed: %s", exc)


def _switch(app: Celery, node: str) -> Callable[[bool], None]:
    """Start or stop this worker's consuming of the phase queue, through Celery's own control channel
    (the consumer's event loop is not ours to touch from another thread)."""

    def consume(on: bool) -> None:
        control = app.control.add_consumer if on else app.control.cancel_consumer
        replies = control(str(app.conf.task_default_queue), destination=[node], reply=True, timeout=5)
        log.info("%s %s: %s", "add_consumer" if on else "cancel_consumer", node, replies)

    return consume


def install(app: Celery, settings: Settings, dispatcher: Dispatcher) -> None:
    """Hook the reconciler and pruning into a prefork worker's lifecycle (main process only)."""
    threads: list[Reconciler | HostGuard] = []
    drain.configure(settings.workspace_dir / "drain")
    name_connections(settings.db_application_name)

    def _ready(sender: Any = None, **_: Any) -> None:
        WorkspaceManager(settings.workspace_dir, settings.worktrees_per_repo).prune()
        threads.append(Reconciler(settings, dispatcher))
        if settings.host_fault_threshold > 0:
            threads.append(HostGuard(settings, sender.hostname, _switch(app, sender.hostname)))
        for thread in threads:
            thread.start()

    def _shutdown(sender: Any = None, **_: Any) -> None:
        for thread in threads:
            thread.stop()

    def _stopping(sender: Any = None, **_: Any) -> None:
        log.info("worker stopping: running phases get %.0f s to finish", settings.drain_seconds)
        drain.begin(settings.drain_seconds)

    def _child(**_: Any) -> None:
        after_fork()

    worker_ready.connect(_ready, weak=False)
    worker_shutdown.connect(_shutdown, weak=False)
    worker_shutting_down.connect(_stopping, weak=False)
    worker_process_init.connect(_child, weak=False)
