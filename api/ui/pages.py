"""Dashboard pages (GET): overview, runs, run, attempt, campaigns, campaign, fleet. Each is a few lines:
read through `api/ui/data.py` or `shared/`, render a template. Live parts are htmx fragments polled
while something is still moving."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import HTMLResponse

from api.deps import SessionDep, SettingsDep
from api.routes.fleet import queue_length_or_error
from api.ui import data
from api.ui.render import page, secure_headers
from api.ui.session import UiDep
from shared.campaigns.progress import get_campaign, list_campaigns, progress
from shared.campaigns.render import render_svg
from shared.campaigns.results import campaign_report
from shared.errors import NotFound
from shared.fleet import fleet_record
from shared.models import utcnow
from shared.runs import get_run
from workers.celery_app import queue_keys

router = APIRouter(prefix="/ui", include_in_schema=False)
Id = Annotated[int, Query(ge=1, le=2**31 - 1)]


@router.get("", response_class=HTMLResponse)
def overview(request: Request, ui: UiDep, session: SessionDep, settings: SettingsDep) -> HTMLResponse:
    workers, workers_error, age = request.app.state.ui_workers.get()
    length, queue_error = queue_length_or_error(request.app.state.celery, settings)
    # Every live run is read for stuck/waiting: refreshed in the background, never on the page's time.
    record, _, record_age = request.app.state.ui_fleet.get() if ui.caller.admin else (None, None, None)
    return page(
        request,
        ui,
        "overview.html",
        o=data.overview(session, ui.caller),
        record_age=record_age,
        workers=workers or [],
        workers_error=workers_error,
        workers_age=age,
        queue_length=length,
        queue_error=queue_error,
        queue_keys=queue_keys(settings.queue_name),
        record=record,
        sandbox=settings.sandbox_summary,
    )


@router.get("/runs", response_class=HTMLResponse)
def runs(
    request: Request,
    ui: UiDep,
    session: SessionDep,
    state: str | None = None,
    repo: str | None = None,
    name: str | None = None,
    campaign: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    cursor: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    fragment: bool = False,
) -> HTMLResponse:
    flt = data.RunFilter(state or None, repo or None, name or None, campaign, cursor)
    rows, next_cursor = data.runs_page(session, ui.caller, flt)
    phases = data.phase_summaries(session, [r.id for r in rows])
    template = "_runs_rows.html" if fragment else "runs.html"
    return page(request, ui, template, runs=rows, phases=phases, flt=flt, next_cursor=next_cursor)


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run(
    request: Request, ui: UiDep, session: SessionDep, run_id: int, fragment: bool = False
) -> HTMLResponse:
    try:
        found = get_run(session, run_id, ui.caller)
    except NotFound as exc:
        return page(request, ui, "missing.html", status=404, what=str(exc))
    attempts = data.attempt_lines(session, found)
    template = "_run_live.html" if fragment else "run.html"
    return page(request, ui, template, run=found, attempts=attempts, live=data.is_live(found))


@router.get("/runs/{run_id}/phases/{index}/attempts/{number}", response_class=HTMLResponse)
def attempt(
    request: Request, ui: UiDep, session: SessionDep, run_id: int, index: int, number: int
) -> HTMLResponse:
    try:
        found = get_run(session, run_id, ui.caller)
    except NotFound as exc:
        return page(request, ui, "missing.html", status=404, what=str(exc))
    detail = data.attempt_detail(session, found, index, number)
    if detail is None:
        return page(
            request, ui, "missing.html", status=404, what=f"run {run_id} has no attempt {index}.{number}"
        )
    phase, row, calls = detail
    return page(
        request,
        ui,
        "attempt.html",
        run=found,
        phase=phase,
        a=row,
        calls=calls,
        diff=data.diff_lines(row.patch),
        advice=data.advice(row.mitigation, row.doctor),
    )


@router.get("/campaigns", response_class=HTMLResponse)
def campaigns(request: Request, ui: UiDep, session: SessionDep, cursor: int | None = None) -> HTMLResponse:
    rows, next_cursor = list_campaigns(session, ui.caller, data.PAGE, cursor)
    return page(
        request, ui, "campaigns.html", campaigns=[progress(session, c) for c in rows], next_cursor=next_cursor
    )


@router.get("/campaigns/{campaign_id}", response_class=HTMLResponse)
def campaign(
    request: Request, ui: UiDep, session: SessionDep, campaign_id: int, fragment: bool = False
) -> HTMLResponse:
    try:
        found = get_campaign(session, campaign_id, ui.caller)
    except NotFound as exc:
        return page(request, ui, "missing.html", status=404, what=str(exc))
    report = campaign_report(session, found)
    session.commit()
    template = "_campaign_live.html" if fragment else "campaign.html"
    return page(
        request, ui, template, c=progress(session, found), report=report, live=found.state == "ACTIVE"
    )


@router.get("/campaigns/{campaign_id}/report.svg")
def campaign_chart(ui: UiDep, session: SessionDep, campaign_id: int) -> Response:
    try:
        found = get_campaign(session, campaign_id, ui.caller)
    except NotFound:
        return Response(status_code=404)
    body = campaign_report(session, found)
    session.commit()
    response = Response(render_svg(body), media_type="image/svg+xml")
    secure_headers(response)
    return response


@router.get("/fleet", response_class=HTMLResponse)
def fleet(request: Request, ui: UiDep, session: SessionDep, settings: SettingsDep) -> HTMLResponse:
    if not ui.caller.admin:
        return page(request, ui, "missing.html", status=403, what="the fleet page needs an admin key")
    workers, workers_error, age = request.app.state.ui_workers.get()
    length, queue_error = queue_length_or_error(request.app.state.celery, settings)
    record = fleet_record(session, redispatch_after=settings.redispatch_after_seconds)
    return page(
        request,
        ui,
        "fleet.html",
        workers=workers or [],
        workers_error=workers_error,
        workers_age=age,
        queue_length=length,
        queue_error=queue_error,
        record=record,
        now=utcnow(),
        flower_url=settings.flower_url,
    )
