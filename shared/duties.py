"""Fleet-wide periodic duties: work any worker can do, that the fleet needs done once per period.

A duty is a row of `fleet_duties`. Claiming the current period's pass is one statement, the UPDATE
`SET due_at = now + period, passes = passes + 1 WHERE name = :duty AND due_at <= now`, or the INSERT of
the row when there is none yet (ON CONFLICT DO NOTHING): the row's write lock orders concurrent claimers,
and every one after the first finds `due_at` in the future, so one pass per period whatever the number
of workers. A winner that dies mid-pass costs one period: the next claim is due then. Times are the
workers' own clocks, as the lease's are: a host whose clock runs ahead claims more often, which costs
only its own time.
"""

from __future__ import annotations

from datetime import timedelta
from typing import cast

from sqlalchemy import Table, update

from shared.db import insert_unless_present, transaction
from shared.models import FleetDuty, utcnow

DUTIES = cast(Table, FleetDuty.__table__)


def claim(db_url: str, name: str, period: float, holder: str) -> bool:
    """Take this period's pass of duty `name`: True for exactly one claimer per `period` seconds."""
    now = utcnow()
    due = now + timedelta(seconds=period)
    with transaction(db_url) as session:
        c = DUTIES.c
        claimed = session.execute(
            update(DUTIES)
            .where(c.name == name, c.due_at <= now)
            .values(due_at=due, passes=c.passes + 1, holder=holder[:200])
            .returning(c.name)
        ).first()
        if claimed is not None:
            return True
        return insert_unless_present(
            session, FleetDuty, {"name": name, "due_at": due, "passes": 1, "holder": holder[:200]}, ["name"]
        )
