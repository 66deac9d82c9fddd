"""The Celery app, configured for long, late-acknowledged phase tasks (FIELD-NOTES: "Celery for long tasks").

`celery --app workers.celery_app:app …` (Flower, inspect) uses the module-level `app`; code that needs
other settings (tests, the embedded fleet) calls `create_app(settings)`.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import redis
from celery import Celery

from shared.settings import Settings, get_settings
from workers import memory_transport, redis_transport

PHASE_TASK = "autopack.execute_phase"
app: Celery  # built on first access by __getattr__ below
QUEUE = "autopack"
# Fair share by Celery's own Redis message priorities (kombu keeps one list per priority step and
# BRPOPs them in order): interactive phases are served before any campaign child's, whatever the
# campaign queued first. Priority 0 is Redis's highest.
INTERACTIVE_PRIORITY = 0
BACKGROUND_PRIORITY = 9
PRIORITY_SEP = ":"


def queue_keys(queue: str = QUEUE) -> tuple[str, str]:
    """The Redis lists behind a queue, highest priority first (what KEDA and `waiting()` read)."""
    return (queue, f"{queue}{PRIORITY_SEP}{BACKGROUND_PRIORITY}")


QUEUE_KEYS = queue_keys(QUEUE)
"""The lists behind the default queue (`Settings.queue_name`)."""


def celery_config(settings: Settings) -> dict[str, Any]:
    transport: dict[str, Any] = {
        "visibility_timeout": settings.visibility_timeout,
        "priority_steps": [INTERACTIVE_PRIORITY, BACKGROUND_PRIORITY],
        "sep": PRIORITY_SEP,
    }
    # Plain redis:// only: rediss:// keeps kombu's own scheme handling (TLS), untested here.
    plain_redis = settings.broker_url.startswith("redis://")
    broker = {"broker_transport": redis_transport.PATH} if plain_redis else {}
    if settings.is_embedded:
        transport = {"polling_interval": settings.embedded_poll_interval}
        broker = {"broker_transport": memory_transport.PATH}
    return {
        **broker,
        "broker_url": settings.broker_url,
        "broker_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "task_default_queue": settings.queue_name,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_ignore_result": True,
        "task_store_errors_even_if_ignored": False,
        "task_soft_time_limit": settings.phase_soft_time_limit,
        "task_time_limit": settings.phase_hard_time_limit,
        "task_serializer": "json",
        "accept_content": ["json"],
        "worker_prefetch_multiplier": 1,
        "worker_soft_shutdown_timeout": settings.soft_shutdown_seconds,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_send_task_events": True,
        "task_send_sent_event": settings.flower_sent_events,
        "worker_hijack_root_logger": False,
        "result_backend": None,
    }


def create_app(settings: Settings) -> Celery:
    app = Celery("autopack")
    app.config_from_object(celery_config(settings))
    # Read back by `inspect conf` for /fleet: each worker says which sandbox it actually runs.
    app.conf.autopack_sandbox = settings.sandbox_summary
    app.autopack_settings = settings
    from workers import tasks  # registers the tasks on this app

    tasks.register(app)
    return app


class CeleryDispatcher:
    """`shared.dispatch.Dispatcher` over a Celery app."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.queue = str(app.conf.task_default_queue)
        self._redis: redis.Redis | None = None

    def enqueue(self, run_id: int, phase_id: int, *, background: bool = False) -> None:
        priority = BACKGROUND_PRIORITY if background else INTERACTIVE_PRIORITY
        self.app.send_task(
            PHASE_TASK, args=[run_id, phase_id], queue=self.queue, priority=priority, retry=False
        )

    def waiting(self) -> set[tuple[int, int]] | None:
        """Read the Redis list behind the queue (messages not yet delivered); None for other brokers.
        Delivered-but-unacked messages are not counted: their worker may be dead."""
        url = str(self.app.conf.broker_url)
        if not url.startswith(("redis://", "rediss://")):
            return None
        if self._redis is None:
            self._redis = redis.Redis.from_url(url, socket_timeout=10)
        pipe = self._redis.pipeline(transaction=False)
        for key in queue_keys(self.queue):
            pipe.lrange(key, 0, -1)
        raws = [raw for listed in pipe.execute() for raw in listed]
        return {ids for raw in raws if (ids := phase_of(raw)) is not None}


def phase_of(raw: bytes | str) -> tuple[int, int] | None:
    """(run id, phase id) of a phase task message as kombu stores it in Redis; None for anything else."""
    try:
        message = json.loads(raw)
        if message["headers"].get("task") != PHASE_TASK:
            return None
        args = json.loads(base64.b64decode(message["body"]))[0]
        return int(args[0]), int(args[1])
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def __getattr__(name: str) -> Celery:
    """`celery --app workers.celery_app:app` (Flower, inspect) gets an app built from the environment,
    created on first use so that importing this module never builds a stray app."""
    if name == "app":
        global app
        app = create_app(get_settings())
        return app
    raise AttributeError(name)
