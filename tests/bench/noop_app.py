"""The raw Celery baseline: one no-op task, Redis broker and result backend, late acks, prefetch 1.

Started as `celery -A tests.bench.noop_app worker -P prefork -c 2` from the repository root.
"""

from __future__ import annotations

import os

from celery import Celery

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
QUEUE = "bench-noop"

app = Celery("bench_noop", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_default_queue=QUEUE,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    result_expires=600,
)


def nothing() -> None:
    """Does nothing: what is measured is the trip through broker, worker and result backend."""


noop = app.task(name="bench.noop")(nothing)
