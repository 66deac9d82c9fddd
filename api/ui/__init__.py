"""The web dashboard at `/ui`: server-rendered (Jinja2), live parts by htmx polling (vendored, pinned,
no CDN), login by API key into a signed cookie session. Postgres is the source of truth."""

from __future__ import annotations

import secrets

from celery import Celery
from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from api.ui import actions, approvals, pages
from api.ui.render import HERE
from api.ui.session import LoginRequired, signer
from api.ui.workers import fleet_view, worker_view
from shared.settings import Settings


def install(app: FastAPI, settings: Settings, celery: Celery) -> None:
    app.state.ui_signer = signer(settings, fallback=secrets.token_urlsafe(32))
    app.state.ui_workers = worker_view(celery, settings)
    app.state.ui_fleet = fleet_view(settings)
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="ui-static")
    app.include_router(actions.router)
    app.include_router(approvals.router)
    app.include_router(pages.router)

    @app.exception_handler(LoginRequired)
    async def login_first(request: Request, _: LoginRequired) -> RedirectResponse:
        return RedirectResponse("/ui/login", status_code=303)
