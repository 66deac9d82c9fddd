"""A run's token metrics: spent (exact), avoided context, Doctor avoided (estimates), A/B deltas."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import Authed, SessionDep
from shared.telemetry import run_metrics

router = APIRouter(prefix="/runs", tags=["metrics"], dependencies=[Authed])


@router.get("/{run_id}/metrics")
def read_run_metrics(run_id: int, session: SessionDep) -> dict[str, Any]:
    return run_metrics(session, run_id)
