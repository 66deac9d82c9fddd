"""A run's token metrics: spent (exact), avoided context, Doctor avoided (estimates), A/B deltas."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import Authed, CallerDep, SessionDep
from api.schemas import RunId, errors
from shared.runs import require_visible
from shared.telemetry import run_metrics

router = APIRouter(prefix="/runs", tags=["metrics"], dependencies=[Authed], responses=errors(401, 404))


@router.get("/{run_id}/metrics")
def read_run_metrics(run_id: RunId, session: SessionDep, caller: CallerDep) -> dict[str, Any]:
    require_visible(session, run_id, caller)
    return run_metrics(session, run_id)
