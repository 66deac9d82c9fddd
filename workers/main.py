"""`autopack worker`: a Celery prefork worker on the phase queue, with the reconciler beside it."""

from __future__ import annotations

import logging

from shared.settings import Settings
from workers.celery_app import QUEUE, CeleryDispatcher, create_app
from workers.commands import configure_sandbox
from workers.runtime import install


def run_worker(settings: Settings, concurrency: int | None, hostname: str | None) -> None:
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    configure_sandbox(settings)  # before anything is consumed: no box, no worker
    app = create_app(settings)
    install(app, settings, CeleryDispatcher(app))
    argv = [
        "worker",
        "--pool=prefork",
        f"--concurrency={concurrency or settings.worker_concurrency}",
        f"--queues={QUEUE}",
        f"--loglevel={settings.log_level}",
        "--task-events",
        "--without-gossip",
        "--without-mingle",
    ]
    if hostname:
        argv.append(f"--hostname={hostname}")
    app.worker_main(argv)
