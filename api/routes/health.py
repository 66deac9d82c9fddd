"""Liveness with dependencies: 200 when the database and broker answer, 503 naming the one that does not."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from api.deps import SettingsDep
from api.schemas import Health
from api.version import VERSION
from shared.db import ping
from shared.errors import ServiceUnavailable

router = APIRouter(tags=["health"])


def _broker_status(request: Request) -> str:
    if request.app.state.settings.is_embedded:
        return "ok (in-process)"
    try:
        with request.app.state.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
    except Exception as exc:
        raise ServiceUnavailable("broker", str(exc).splitlines()[0][:300]) from exc
    return "ok"


@router.get("/health", response_model=Health, responses={503: {"description": "a dependency is down"}})
def health(request: Request, settings: SettingsDep) -> Health | JSONResponse:
    body = {
        "service": "autopack-api",
        "version": VERSION,
        "mode": "embedded" if settings.is_embedded else "fleet",
        "sandbox": settings.sandbox_summary,
    }
    try:
        ping(settings.database_url)
        body["database"] = "ok"
        body["broker"] = _broker_status(request)
    except ServiceUnavailable as exc:
        body.setdefault("database", "ok" if exc.service != "database" else f"down: {exc.detail}")
        body.setdefault("broker", "unknown" if exc.service == "database" else f"down: {exc.detail}")
        return JSONResponse(status_code=503, content=body)
    return Health.model_validate(body)
