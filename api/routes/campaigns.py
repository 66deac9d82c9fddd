"""Campaigns: create, list, progress, cancel, and the A/B report (JSON, Markdown or SVG)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, BackgroundTasks, Query, Response, status

from api.deps import Authed, CallerDep, DispatcherDep, SessionDep, SettingsDep
from api.schemas import MAX_ID, CampaignCreated, CampaignPage, RunId, errors
from shared.campaigns.create import create_campaign
from shared.campaigns.flow import cancel_campaign
from shared.campaigns.progress import CampaignProgress, get_campaign, list_campaigns, progress
from shared.campaigns.render import render_markdown, render_svg
from shared.campaigns.results import campaign_report
from shared.campaigns.spec import CampaignSpec
from shared.outbox import claim_many

router = APIRouter(prefix="/campaigns", tags=["campaigns"], dependencies=[Authed], responses=errors(401))
CampaignId = RunId
MEDIA = {"md": "text/markdown; charset=utf-8", "svg": "image/svg+xml"}


@router.post("", status_code=status.HTTP_201_CREATED, responses=errors(400, 413))
def create(
    spec: CampaignSpec,
    session: SessionDep,
    settings: SettingsDep,
    dispatcher: DispatcherDep,
    caller: CallerDep,
    later: BackgroundTasks,
) -> CampaignCreated:
    created = create_campaign(session, spec, settings, caller)
    session.commit()
    # After the response, in one pass: the outbox rows are the promise, the reconciler the backstop.
    later.add_task(claim_many, settings.database_url, dispatcher, created.dispatch)
    skipped = [{"run_id": s.run_id, "reason": s.reason} for s in created.skipped]
    return CampaignCreated(
        id=created.campaign_id,
        children=created.children,
        dispatched=len(created.dispatch),
        skipped_sources=skipped,
    )


@router.get("")
def list_all(
    session: SessionDep,
    caller: CallerDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
) -> CampaignPage:
    page, next_cursor = list_campaigns(session, caller, limit, cursor)
    return CampaignPage(items=[progress(session, c) for c in page], next_cursor=next_cursor)


@router.get("/{campaign_id}", responses=errors(404))
def read(campaign_id: CampaignId, session: SessionDep, caller: CallerDep) -> CampaignProgress:
    return progress(session, get_campaign(session, campaign_id, caller))


@router.post("/{campaign_id}/cancel", responses=errors(404))
def cancel(campaign_id: CampaignId, session: SessionDep, caller: CallerDep) -> CampaignProgress:
    cancel_campaign(session, campaign_id, caller)
    session.commit()
    return progress(session, get_campaign(session, campaign_id, caller))


@router.get(
    "/{campaign_id}/report",
    responses={**errors(404), 200: {"content": {"application/json": {}, MEDIA["md"]: {}, MEDIA["svg"]: {}}}},
)
def report(
    campaign_id: CampaignId,
    session: SessionDep,
    caller: CallerDep,
    format: Literal["json", "md", "svg"] = "json",
) -> Any:
    body = campaign_report(session, get_campaign(session, campaign_id, caller))
    session.commit()
    if format == "md":
        return Response(render_markdown(body), media_type=MEDIA["md"])
    if format == "svg":
        return Response(render_svg(body), media_type=MEDIA["svg"])
    return body
