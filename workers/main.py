"""`autopack worker`: a Celery prefork worker on the phase queue, with the reconciler beside it.

Memory: everything a phase needs is imported here, in the parent, before Celery forks the pool
(`create_app` imports `workers.tasks`, which imports the executor and its dependencies, and the
database driver). `gc.freeze()` then moves those objects out of the collector's reach, so a child's
first full collection does not write to (and so copy) every page it shares with the parent.
The API server stack (FastAPI, uvicorn) and the campaign statistics (numpy) are never imported.
"""

from __future__ import annotations

import gc
import logging
import os

from shared.settings import Settings
from workers.celery_app import CeleryDispatcher, create_app
from workers.commands import configure_sandbox
from workers.runtime import install


def default_node_name() -> str:
    """Unique per process: two workers on one host must not both be `celery@<host>`, or Celery and
    `autopack fleet` see one node where two run. `%h` is Celery's own placeholder for the host name."""
    return f"autopack-{os.getpid()}@%h"


def run_worker(settings: Settings, concurrency: int | None, hostname: str | None) -> None:
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    configure_sandbox(settings)  # before anything is consumed: no box, no worker
    app = create_app(settings)
    install(app, settings, CeleryDispatcher(app))
    argv = [
        "worker",
        "--pool=prefork",
        f"--concurrency={concurrency or settings.worker_concurrency}",
        f"--queues={settings.queue_name}",
        f"--loglevel={settings.log_level}",
        "--task-events",
        "--without-gossip",
        "--without-mingle",
        f"--hostname={hostname or default_node_name()}",
    ]
    share_with_children()
    app.worker_main(argv)


def share_with_children() -> None:
    """Just before the pool forks: collect once, then freeze what is left (see the module docstring)."""
    gc.collect()
    gc.freeze()
