"""What each worker host says of itself, in the database: written by the worker's guard, read by `/fleet`."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db import transaction
from shared.models import WorkerHost, utcnow
from shared.states import HostState


class HostView(BaseModel):
    name: str
    state: HostState
    reason: str | None
    """Why the host took itself out: the last host fault, or the last failed probe."""
    consecutive_faults: int
    sick_since: datetime | None
    last_probe_at: datetime | None
    last_probe_error: str | None
    updated_at: datetime


def report(
    db_url: str,
    name: str,
    state: HostState,
    *,
    reason: str | None = None,
    faults: int = 0,
    sick_since: datetime | None = None,
    probe_error: str | None = None,
    probed: bool = False,
) -> None:
    """Upsert this host's row (one writer per name: its own guard)."""
    with transaction(db_url) as session:
        row = session.get(WorkerHost, name) or WorkerHost(name=name)
        row.state = state
        row.reason = reason
        row.consecutive_faults = faults
        row.sick_since = sick_since
        row.last_probe_error = probe_error
        if probed:
            row.last_probe_at = utcnow()
        row.updated_at = utcnow()
        session.add(row)


def hosts(session: Session) -> list[HostView]:
    rows = session.scalars(select(WorkerHost).order_by(WorkerHost.name)).all()
    return [HostView.model_validate(r, from_attributes=True) for r in rows]
