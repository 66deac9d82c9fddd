"""The FastAPI application: thin routes over `shared/`, errors mapped to HTTP in one place."""

from __future__ import annotations

from celery import Celery
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError

from api import ui
from api.limits import BodyLimit
from api.routes import approvals, campaigns, fleet, health, metrics, patterns, plans, runs
from api.version import VERSION
from shared.db import require_migrated
from shared.errors import Conflict, InvalidSpec, NotFound, ServiceUnavailable
from shared.keys import VerifiedKeys
from shared.settings import Settings
from workers.celery_app import CeleryDispatcher


def create_app(settings: Settings, celery: Celery) -> FastAPI:
    """Build the API. Refuses to start on a database that is not migrated (it says which command to run)."""
    require_migrated(settings.database_url)
    app = FastAPI(title="Autopack Fleet", version=VERSION, docs_url="/docs")
    app.state.settings = settings
    app.state.celery = celery
    app.state.dispatcher = CeleryDispatcher(celery)
    app.state.verified_keys = VerifiedKeys(settings.api_key_cache_seconds)
    app.include_router(health.router)
    app.include_router(runs.router)
    app.include_router(metrics.router)
    app.include_router(campaigns.router)
    app.include_router(plans.router)
    app.include_router(fleet.router)
    app.include_router(patterns.router)
    app.include_router(approvals.router)
    app.include_router(fleet.metrics_router(settings, celery))
    ui.install(app, settings, celery)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    _errors(app)
    return app


def _errors(app: FastAPI) -> None:
    @app.exception_handler(InvalidSpec)
    async def invalid_spec(_: Request, exc: InvalidSpec) -> JSONResponse:
        detail = [{"loc": ["body", *_loc(exc.field)], "msg": exc.message, "type": "invalid_spec"}]
        return JSONResponse(status_code=422, content={"detail": detail})

    @app.exception_handler(NotFound)
    async def not_found(_: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse(status_code=404, content={"detail": str(exc)})

    @app.exception_handler(Conflict)
    async def conflict(_: Request, exc: Conflict) -> JSONResponse:
        return JSONResponse(status_code=409, content={"detail": str(exc)})

    @app.exception_handler(ServiceUnavailable)
    async def unavailable(_: Request, exc: ServiceUnavailable) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": str(exc), "service": exc.service})

    @app.exception_handler(SQLAlchemyError)
    async def database_down(_: Request, exc: SQLAlchemyError) -> JSONResponse:
        # Only the driver's first line: the statement and its parameters stay out of responses.
        first = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0][:300]
        return JSONResponse(
            status_code=503, content={"detail": f"database error: {first}", "service": "database"}
        )


def _loc(field: str) -> list[str | int]:
    """`phases.0.scope` as FastAPI spells a location: `["phases", 0, "scope"]`."""
    return [int(part) if part.isdigit() else part for part in field.split(".")]
