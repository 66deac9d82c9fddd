"""Dashboard approvals: pending governed changes with their diff, and Approve/Reject (CSRF-protected
POSTs, like the cancel button). Decisions go through `shared.approvals.store`, as the API's do."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Form, Request, Response
from fastapi.responses import HTMLResponse

from api.deps import DispatcherDep, SessionDep, SettingsDep
from api.ui.actions import redirect
from api.ui.data import diff_lines
from api.ui.render import page
from api.ui.session import CsrfDep, UiDep
from shared.approvals import store
from shared.errors import Conflict, NotFound
from shared.outbox import claim_and_enqueue
from shared.states import ApprovalState

router = APIRouter(prefix="/ui/approvals", include_in_schema=False)
PAGE = 50


@router.get("", response_class=HTMLResponse)
def approvals(request: Request, ui: UiDep, session: SessionDep) -> HTMLResponse:
    rows, _ = store.list_approvals(session, ui.caller, ApprovalState.PENDING, PAGE, None)
    shown = [(a, p, diff_lines(a.patch)) for a, p in rows]
    return page(request, ui, "approvals.html", approvals=shown)


@router.get("/{approval_id}", response_class=HTMLResponse)
def approval(request: Request, ui: UiDep, session: SessionDep, approval_id: int) -> HTMLResponse:
    try:
        a, p = store.get_approval(session, approval_id, ui.caller)
    except NotFound as exc:
        return page(request, ui, "missing.html", status=404, what=str(exc))
    return page(request, ui, "approval.html", a=a, p=p, diff=diff_lines(a.patch))


@router.post("/{approval_id}/{verdict}")
def decide(
    request: Request,
    ui: CsrfDep,
    session: SessionDep,
    settings: SettingsDep,
    dispatcher: DispatcherDep,
    later: BackgroundTasks,
    approval_id: int,
    verdict: str,
    reason: Annotated[str, Form(max_length=4000)] = "",
) -> Response:
    if verdict not in ("approve", "reject"):
        return page(request, ui, "missing.html", status=404, what=f"no action {verdict!r}")
    if verdict == "reject" and not reason.strip():
        return page(request, ui, "missing.html", status=422, what="a rejection needs a reason")
    try:
        a, p = store.decide(
            session, approval_id, ui.caller, approve=verdict == "approve", reason=reason.strip() or None
        )
    except NotFound as exc:
        return page(request, ui, "missing.html", status=404, what=str(exc))
    except Conflict as exc:
        return page(request, ui, "missing.html", status=409, what=str(exc))
    run_id, phase_id = a.run_id, p.id
    session.commit()
    later.add_task(claim_and_enqueue, settings.database_url, dispatcher, run_id, phase_id, None)
    return redirect(f"/ui/approvals/{approval_id}")
