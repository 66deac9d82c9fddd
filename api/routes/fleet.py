"""The fleet view (`GET /fleet`, authenticated) and Prometheus metrics (`GET /metrics`, aggregates only).

`/metrics` needs no key, like Flower's: it exposes counts and durations, never ids, names or secrets.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

from celery import Celery
from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from api.deps import AdminOnly, Authed, SessionDep, SettingsDep
from api.schemas import errors
from shared.fleet import (
    ActiveTask,
    FleetCollector,
    FleetView,
    WorkerView,
    fleet_record,
    is_redis_url,
    redis_queue_length,
)
from shared.models import utcnow
from shared.settings import Settings
from workers.celery_app import queue_keys

INSPECT_TIMEOUT = 1.0

# Every owner's runs, workers and leases: the operator's view, so admin keys only.
router = APIRouter(tags=["fleet"], dependencies=[Authed, AdminOnly], responses=errors(401, 403))


@router.get("/fleet")
def read_fleet(request: Request, session: SessionDep, settings: SettingsDep) -> FleetView:
    celery: Celery = request.app.state.celery
    workers, workers_error = workers_or_error(celery, settings)
    length, queue_error = queue_length_or_error(celery, settings)
    record = fleet_record(session, redispatch_after=settings.redispatch_after_seconds)
    return FleetView(
        generated_at=utcnow(),
        mode="embedded" if settings.is_embedded else "fleet",
        sandbox=settings.sandbox_summary,
        workers=workers,
        workers_error=workers_error,
        queue=settings.queue_name,
        queue_length=length,
        queue_error=queue_error,
        redispatch_after_seconds=settings.redispatch_after_seconds,
        **record.model_dump(),
    )


def metrics_router(settings: Settings, celery: Celery) -> APIRouter:
    """`GET /metrics` over a registry of this app's own (several apps in one process do not collide)."""
    registry = CollectorRegistry()
    registry.register(
        FleetCollector(settings.database_url, lambda: queue_length_or_error(celery, settings)[0])
    )
    metrics = APIRouter(tags=["metrics"])

    @metrics.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
    def read_prometheus_metrics() -> Response:
        return Response(content=generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return metrics


# --- the broker's half ------------------------------------------------------------------------------


def queue_length_or_error(celery: Celery, settings: Settings) -> tuple[int | None, str | None]:
    try:
        if is_redis_url(settings.broker_url):
            return redis_queue_length(settings.broker_url, queue_keys(settings.queue_name)), None
        with celery.connection_for_read() as conn:  # in-process (or another) transport: ask kombu
            return int(
                conn.default_channel.queue_declare(settings.queue_name, passive=True).message_count
            ), None
    except Exception as exc:
        return None, _first_line(exc)


def workers_or_error(celery: Celery, settings: Settings) -> tuple[list[WorkerView], str | None]:
    if settings.is_embedded:
        return [_embedded_pool(settings)], None
    error = ""
    for _ in range(2):  # kombu's pooled connection may have died with a broker restart: one fresh try
        try:
            return _inspect(celery), None
        except Exception as exc:
            error = _first_line(exc)
    return [], error


def _inspect(celery: Celery) -> list[WorkerView]:
    """Ping (waits the whole timeout: anyone may answer), then ask only the workers that answered."""
    pongs: dict[str, Any] = celery.control.inspect(timeout=INSPECT_TIMEOUT).ping() or {}
    if not pongs:
        return []
    names = sorted(pongs)
    asked = celery.control.inspect(timeout=INSPECT_TIMEOUT, destination=names, limit=len(names))
    active: dict[str, Any] = asked.active() or {}
    stats: dict[str, Any] = asked.stats() or {}
    confs: dict[str, Any] = asked.conf() or {}
    views = []
    for name in names:
        info = stats.get(name) or {}
        pool = info.get("pool") or {}
        total = info.get("total")
        views.append(
            WorkerView(
                name=name,
                alive=True,
                pool=_pool_name(pool.get("implementation")),
                concurrency=pool.get("max-concurrency"),
                pid=info.get("pid"),
                tasks_total=sum(total.values()) if isinstance(total, dict) else None,
                active=[_task(t) for t in active.get(name) or []],
                sandbox=(confs.get(name) or {}).get("autopack_sandbox"),
            )
        )
    return views


def _embedded_pool(settings: Settings) -> WorkerView:
    """The in-process thread pool of `autopack api` in embedded mode (no broadcast to ask)."""
    from celery.worker import state

    alive = any(t.name == "autopack-embedded-worker" and t.is_alive() for t in threading.enumerate())
    return WorkerView(
        name="embedded (in-process)",
        alive=alive,
        pool="threads",
        concurrency=settings.worker_concurrency,
        sandbox=settings.sandbox_summary,
        tasks_total=sum(state.total_count.values()),
        active=[_task(r.info()) for r in list(state.active_requests)],
    )


def _task(info: dict[str, Any]) -> ActiveTask:
    args = info.get("args")
    run_id = phase_id = None
    if isinstance(args, list | tuple) and len(args) >= 2:
        run_id, phase_id = _int(args[0]), _int(args[1])
    start = info.get("time_start")
    started = datetime.fromtimestamp(start, UTC) if isinstance(start, int | float) and start > 0 else None
    return ActiveTask(task_id=info.get("id"), run_id=run_id, phase_id=phase_id, started_at=started)


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _pool_name(implementation: Any) -> str | None:
    # e.g. "celery.concurrency.prefork:TaskPool" -> "prefork"
    if not isinstance(implementation, str):
        return None
    return implementation.split(":")[0].rsplit(".", 1)[-1]


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
