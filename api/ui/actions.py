"""Dashboard actions (POST, each with the session's CSRF token): log in and out, cancel a run or a
campaign, re-run a run's failed phases. Each answers with a redirect to the page that shows the result."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from api.deps import DispatcherDep, SessionDep, SettingsDep
from api.ui.render import page, secure_headers
from api.ui.session import (
    COOKIE,
    LOGIN_COOKIE,
    CsrfDep,
    SignerDep,
    cookie_args,
    new_csrf,
    read_cookie,
    session_cookie,
)
from shared import runs as run_ops
from shared.campaigns.create import create_campaign
from shared.campaigns.flow import cancel_campaign
from shared.campaigns.spec import CampaignSpec
from shared.errors import InvalidSpec, NotFound
from shared.keys import verify_key
from shared.outbox import claim_many

router = APIRouter(prefix="/ui", include_in_schema=False)
LOGIN_MINUTES = 30


def redirect(url: str) -> RedirectResponse:
    response = RedirectResponse(url, status_code=303)
    secure_headers(response)
    return response


@router.get("/login", response_class=HTMLResponse)
def login_form(
    request: Request, serializer: SignerDep, settings: SettingsDep, error: str | None = None
) -> Response:
    if not settings.needs_api_key:
        return redirect("/ui")
    token = new_csrf()
    response = page(request, None, "login.html", login_csrf=token, error=error)
    response.set_cookie(LOGIN_COOKIE, serializer.dumps(token), **cookie_args(request, LOGIN_MINUTES * 60))
    return response


@router.post("/login")
def login(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    serializer: SignerDep,
    api_key: Annotated[str, Form()] = "",
    csrf_token: Annotated[str, Form()] = "",
) -> Response:
    expected = read_cookie(request, serializer, LOGIN_COOKIE, LOGIN_MINUTES * 60)
    if not isinstance(expected, str) or not secrets.compare_digest(expected, csrf_token):
        return page(request, None, "missing.html", status=403, what="the login form expired: reload it")
    key = verify_key(session, api_key.strip())
    if key is None:
        return redirect("/ui/login?error=unknown+or+revoked+key")
    response = redirect("/ui")
    value = session_cookie(serializer, key.id, new_csrf())
    response.set_cookie(COOKIE, value, **cookie_args(request, settings.ui_session_hours * 3600))
    response.delete_cookie(LOGIN_COOKIE, path="/ui")
    return response


@router.post("/logout")
def logout(_: CsrfDep) -> Response:
    response = redirect("/ui/login")
    response.delete_cookie(COOKIE, path="/ui")
    return response


@router.post("/runs/{run_id}/cancel")
def cancel_run(request: Request, ui: CsrfDep, session: SessionDep, run_id: int) -> Response:
    try:
        run_ops.cancel_run(session, run_id, ui.caller)
    except NotFound as exc:
        return page(request, ui, "missing.html", status=404, what=str(exc))
    return redirect(f"/ui/runs/{run_id}")


@router.post("/runs/{run_id}/rerun")
def rerun_failed(
    request: Request,
    ui: CsrfDep,
    session: SessionDep,
    settings: SettingsDep,
    dispatcher: DispatcherDep,
    later: BackgroundTasks,
    run_id: int,
) -> Response:
    """A one-source `failed_phases` campaign: the run's completed phases are reused, the rest run again."""
    spec = CampaignSpec.model_validate(
        {
            "name": f"re-run failed phases of run {run_id}",
            "source": {"run_ids": [run_id]},
            "mode": "failed_phases",
        }
    )
    try:
        created = create_campaign(session, spec, settings, ui.caller)
    except InvalidSpec as exc:
        return page(
            request, ui, "missing.html", status=422, what=f"cannot re-run run {run_id}: {exc.message}"
        )
    session.commit()
    later.add_task(claim_many, settings.database_url, dispatcher, created.dispatch)
    child = created.dispatch[0][0] if created.dispatch else None
    return redirect(f"/ui/runs/{child}" if child else f"/ui/campaigns/{created.campaign_id}")


@router.post("/campaigns/{campaign_id}/cancel")
def cancel(request: Request, ui: CsrfDep, session: SessionDep, campaign_id: int) -> Response:
    try:
        cancel_campaign(session, campaign_id, ui.caller)
    except NotFound as exc:
        return page(request, ui, "missing.html", status=404, what=str(exc))
    session.commit()
    return redirect(f"/ui/campaigns/{campaign_id}")
