"""The per-run lease: mutual exclusion that survives holder death and fences a holder that lost it.

A lease is a row state on `runs`: owner, expiry, and an epoch bumped on every grant. Renewal and every
result write carry `lease_epoch = :mine`, so a paused or partitioned holder that was taken over finds
zero rows to update and records nothing (Kleppmann's fencing token, kept by the database itself).
Times come from the worker's clock: hosts must run NTP, and the TTL must dwarf the expected skew.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import or_, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from shared.db import transaction
from shared.errors import LeaseLost
from shared.models import Run, utcnow
from shared.states import RunState

log = logging.getLogger(__name__)


@dataclass
class Lease:
    db_url: str
    run_id: int
    owner: str
    epoch: int
    ttl: float
    lost: threading.Event = field(default_factory=threading.Event)

    def fence(self, session: Session) -> None:
        """Inside a write transaction: prove we still hold the lease (and renew it) or raise LeaseLost.

        The UPDATE takes the run row's write lock, so a takeover cannot slip in before our commit.
        """
        res = session.execute(
            update(Run)
            .where(Run.id == self.run_id, Run.lease_epoch == self.epoch, Run.lease_owner == self.owner)
            .values(lease_expires_at=utcnow() + timedelta(seconds=self.ttl))
        )
        if res.rowcount != 1:  # type: ignore[attr-defined]
            self.lost.set()
            raise LeaseLost(f"run {self.run_id}: lease epoch {self.epoch} is no longer ours")

    def renew(self) -> bool:
        try:
            with transaction(self.db_url) as session:
                self.fence(session)
            return True
        except LeaseLost:
            return False

    def release(self) -> None:
        with transaction(self.db_url) as session:
            session.execute(
                update(Run)
                .where(Run.id == self.run_id, Run.lease_epoch == self.epoch)
                .values(lease_owner=None, lease_expires_at=None)
            )

    def check(self) -> None:
        if self.lost.is_set():
            raise LeaseLost(f"run {self.run_id}: lease epoch {self.epoch} was lost")


def acquire(db_url: str, run_id: int, owner: str, ttl: float) -> Lease | None:
    """Take the run's lease if it is free or expired; None if a live holder has it."""
    now = utcnow()
    with transaction(db_url) as session:
        epoch = session.execute(
            update(Run)
            .where(
                Run.id == run_id,
                Run.state.in_([RunState.QUEUED, RunState.RUNNING]),
                or_(Run.lease_owner.is_(None), Run.lease_expires_at < now),
            )
            .values(
                lease_owner=owner,
                lease_expires_at=now + timedelta(seconds=ttl),
                lease_epoch=Run.lease_epoch + 1,
            )
            .returning(Run.lease_epoch)
        ).scalar_one_or_none()
    return None if epoch is None else Lease(db_url, run_id, owner, epoch, ttl)


@contextmanager
def heartbeat(lease: Lease, interval: float) -> Iterator[Lease]:
    """Renew the lease every `interval` seconds until the block ends; set `lease.lost` if renewal fails."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            try:
                if not lease.renew():
                    log.warning("run %s: lease lost (epoch %s)", lease.run_id, lease.epoch)
                    return
            except SQLAlchemyError as exc:  # a DB blip: keep trying until the TTL runs out
                log.warning("run %s: lease renewal failed: %s", lease.run_id, exc)

    thread = threading.Thread(target=beat, name=f"lease-{lease.run_id}", daemon=True)
    thread.start()
    try:
        yield lease
    finally:
        stop.set()
        thread.join(timeout=interval + 5)
