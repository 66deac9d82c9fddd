"""Runs: submit, read, list, cancel."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Query, status

from api.deps import Authed, CallerDep, DispatcherDep, SessionDep, SettingsDep
from api.schemas import MAX_ID, RunId, RunOut, RunPage, errors
from shared import runs
from shared.admission import admit
from shared.outbox import claim_and_enqueue
from shared.specs import RunSpec
from shared.states import RunState

router = APIRouter(prefix="/runs", tags=["runs"], dependencies=[Authed], responses=errors(401))


@router.post("", status_code=status.HTTP_201_CREATED, responses=errors(400, 413))
def submit_run(
    spec: RunSpec,
    session: SessionDep,
    settings: SettingsDep,
    dispatcher: DispatcherDep,
    caller: CallerDep,
    later: BackgroundTasks,
) -> RunOut:
    admit(spec, settings)
    run = runs.create_run(session, spec, owner=caller.owner)
    session.commit()
    # After the response: a slow or dead broker must not hold the client; the outbox row is the promise.
    later.add_task(claim_and_enqueue, settings.database_url, dispatcher, run.id, run.phases[0].id, None)
    return RunOut.of(runs.get_run(session, run.id))


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
) -> RunPage:
    page, next_cursor = runs.list_runs(session, state=state, limit=limit, cursor=cursor, caller=caller)
    return RunPage(items=[RunOut.of(r) for r in page], next_cursor=next_cursor)


@router.post("/{run_id}/cancel", responses=errors(404))
def cancel_run(run_id: RunId, session: SessionDep, caller: CallerDep) -> RunOut:
    return RunOut.of(runs.cancel_run(session, run_id, caller), with_attempts=True)
