"""The embedded fleet: in-process broker and worker threads, for a laptop and the demo.

Celery's thread pool enforces no time limits; the per-command timeouts still apply.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from celery import Celery

from shared.settings import Settings
from workers.celery_app import CeleryDispatcher, create_app
from workers.commands import configure_sandbox
from workers.runtime import Reconciler
from workers.workspace import WorkspaceManager


@contextmanager
def embedded_fleet(settings: Settings, concurrency: int | None = None) -> Iterator[Celery]:
    """Yield a Celery app whose worker threads run in this process until the block ends."""
    configure_sandbox(settings)
    app = create_app(settings)
    # Pool threads resolve tasks through the *default* app, not the thread-local current one.
    app.set_default()
    WorkspaceManager(settings.workspace_dir, settings.worktrees_per_repo).prune()
    worker = app.WorkController(
        pool_cls="threads",
        concurrency=concurrency or settings.worker_concurrency,
        queues=[settings.queue_name],
        loglevel=settings.log_level,
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
        hostname=f"embedded@{threading.get_native_id()}",
    )
    thread = threading.Thread(target=worker.start, name="autopack-embedded-worker", daemon=True)
    thread.start()
    reconciler = Reconciler(settings, CeleryDispatcher(app))
    reconciler.start()
    try:
        yield app
    finally:
        reconciler.stop()
        worker.stop(in_sighandler=False)
        thread.join(timeout=30)
