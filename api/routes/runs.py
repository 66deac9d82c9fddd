"""Runs: submit, read, list, cancel, and the full texts of their attempts."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Query, Response, status

from api.deps import Authed, CallerDep, DispatcherDep, SessionDep, SettingsDep
from api.schemas import MAX_ID, AttemptDetail, RunId, RunOut, RunPage, errors
from shared import runs
from shared.admission import admit
from shared.outbox import enqueue_claimed
from shared.specs import RunSpec
from shared.states import RunState

router = APIRouter(prefix="/runs", tags=["runs"], dependencies=[Authed], responses=errors(401))


# Answers with a Response of its own: FastAPI validates a sync route's returned model again, in
# another threadpool hop, and this route built its model from the values written a moment before.
@router.post("", status_code=status.HTTP_201_CREATED, response_model=RunOut, responses=errors(400, 413))
def submit_run(
    spec: RunSpec,
    session: SessionDep,
    settings: SettingsDep,
    dispatcher: DispatcherDep,
    caller: CallerDep,
    later: BackgroundTasks,
) -> Response:
    admit(spec, settings)
    out = RunOut.stored(runs.submit(session, spec, owner=caller.owner))  # from the values written
    # After the response: a slow or dead broker must not hold the client. The claim committed with the
    # run, so a broker refusal puts it back to pending, and a process dead before sending leaves it to
    # the reconciler's stale redispatch, as a worker's claim in `record.succeed` is.
    later.add_task(
        enqueue_claimed, settings.database_url, dispatcher, out.id, out.phases[0].id, background=False
    )
    body = out.model_dump_json(by_alias=True)
    return Response(body, status.HTTP_201_CREATED, media_type="application/json", background=later)


@router.get("/{run_id}", responses=errors(404))
def read_run(run_id: RunId, session: SessionDep, caller: CallerDep) -> RunOut:
    return RunOut.of(runs.get_run(session, run_id, caller), with_attempts=True)


@router.get("")
def list_runs(
    session: SessionDep,
    caller: CallerDep,
    state: RunState | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    campaign_id: Annotated[
        int | None, Query(ge=1, le=MAX_ID, description="Only this campaign's runs.")
    ] = None,
) -> RunPage:
    page, next_cursor = runs.list_runs(
        session, state=state, limit=limit, cursor=cursor, caller=caller, campaign_id=campaign_id
    )
    return RunPage(items=[RunOut.of(r) for r in page], next_cursor=next_cursor)


@router.post("/{run_id}/cancel", responses=errors(404))
def cancel_run(run_id: RunId, session: SessionDep, caller: CallerDep) -> RunOut:
    return RunOut.of(runs.cancel_run(session, run_id, caller), with_attempts=True)


@router.get("/{run_id}/attempts", responses=errors(404))
def read_attempts(
    run_id: RunId,
    session: SessionDep,
    caller: CallerDep,
    phase: Annotated[int | None, Query(ge=0, le=MAX_ID, description="Only this phase (its index).")] = None,
) -> list[AttemptDetail]:
    """Every attempt of the run (or of one phase) with its outputs: builder output, diff, validation
    output, mitigation and Doctor advice. `GET /runs/{id}` leaves these big texts out."""
    return [AttemptDetail.of(p, a) for p, a in runs.run_attempts(session, run_id, caller, phase)]
