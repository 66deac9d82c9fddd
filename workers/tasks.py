"""Celery tasks: ids in, a plain domain function, the outcome logged. Nothing else lives here."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, Task
from sqlalchemy.engine import make_url

from shared.settings import Settings
from workers.celery_app import PHASE_TASK, CeleryDispatcher
from workers.executor import WorkerContext, execute_phase

log = logging.getLogger(__name__)


def context_for(app: Celery) -> WorkerContext:
    ctx: WorkerContext | None = getattr(app, "autopack_context", None)
    if ctx is None:
        settings: Settings = app.autopack_settings
        ctx = WorkerContext.build(settings, CeleryDispatcher(app))
        app.autopack_context = ctx
    return ctx


def execute_phase_task(task: Task[Any, Any], run_id: int, phase_id: int) -> str:
    outcome = execute_phase(context_for(task.app), run_id, phase_id)
    log.info("run %s phase %s: %s", run_id, phase_id, outcome)
    return outcome


def register(app: Celery) -> None:
    preload_driver(app.autopack_settings.database_url)
    # shared=False: each app (tests, the embedded fleet) gets its own task bound to its own settings.
    app.task(name=PHASE_TASK, bind=True, shared=False)(execute_phase_task)


def preload_driver(db_url: str) -> None:
    """Import the database driver now, in the prefork parent: the engine is built lazily in each child,
    and a driver first imported there (psycopg and its C extension) would be private to every child."""
    make_url(db_url).get_dialect().import_dbapi()
