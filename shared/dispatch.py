"""How a stored phase reaches a worker. `shared/` only knows the interface; `workers/` implements it."""

from __future__ import annotations

from typing import Protocol


class Dispatcher(Protocol):
    def enqueue(self, run_id: int, phase_id: int, *, background: bool = False) -> None:
        """Queue one execution of the phase. May be called more than once: tasks are safe to run twice.

        `background` (a campaign's child) queues it behind every interactive phase."""
        ...

    def waiting(self) -> set[tuple[int, int]] | None:
        """(run id, phase id) of every message still waiting in the broker's queue, not yet delivered
        to a worker; None when the broker cannot tell. The reconciler never re-dispatches these."""
        ...
