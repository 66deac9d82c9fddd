"""Where a slot's time goes between two `sleep 1` phases: the (e) sleep batch's overhead, split up.

From the database's own timestamps (one server clock): a phase's started_at -> its first attempt's
started_at (lease, job load, worktree), the attempt minus the command's work (builder, boxes, commit),
the last attempt's finished_at -> the phase's finished_at (push, records), and the gap on one worker
process from one phase's finished_at to the next phase's started_at (lease release, next claim, the
Celery ack and fetch, the task's start). A process is an attempt's `worker` (host/pid/lease nonce) less
its nonce. With one run per phase there is no next-phase enqueue in these numbers.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import pairwise

from sqlalchemy import func, select

from shared.db import session_factory
from shared.models import Attempt, Phase
from tests.bench.stats import Summary


@dataclass(frozen=True)
class Overhead:
    start_to_attempt: Summary
    attempt_beyond_work: Summary
    attempt_to_finish: Summary
    same_process_gap: Summary

    def parts(self) -> list[tuple[str, Summary]]:
        return [
            ("phase start -> attempt start", self.start_to_attempt),
            ("attempt minus the command's work", self.attempt_beyond_work),
            ("attempt end -> phase finished", self.attempt_to_finish),
            ("finished -> next start, same process", self.same_process_gap),
        ]

    def as_dict(self) -> dict[str, object]:
        return {label: s.as_dict() for label, s in self.parts()}


@dataclass(frozen=True)
class _Span:
    process: str
    started: datetime
    finished: datetime
    attempt_started: datetime
    attempt_finished: datetime


def overhead(db_url: str, run_ids: Sequence[int], work_seconds: float) -> Overhead:
    spans = _spans(db_url, run_ids)
    gaps: list[float] = []
    by_process: dict[str, list[_Span]] = defaultdict(list)
    for span in spans:
        by_process[span.process].append(span)
    for own in by_process.values():
        own.sort(key=lambda s: s.started)
        gaps += [(b.started - a.finished).total_seconds() for a, b in pairwise(own)]
    return Overhead(
        Summary.of([(s.attempt_started - s.started).total_seconds() for s in spans]),
        Summary.of([(s.attempt_finished - s.attempt_started).total_seconds() - work_seconds for s in spans]),
        Summary.of([(s.finished - s.attempt_finished).total_seconds() for s in spans]),
        Summary.of(gaps),
    )


def _spans(db_url: str, run_ids: Sequence[int]) -> list[_Span]:
    query = (
        select(
            func.min(Attempt.worker),
            Phase.started_at,
            Phase.finished_at,
            func.min(Attempt.started_at),
            func.max(Attempt.finished_at),
        )
        .join(Attempt, Attempt.phase_id == Phase.id)
        .where(Phase.run_id.in_(list(run_ids)), Phase.finished_at.is_not(None))
        .group_by(Phase.id)
    )
    with session_factory(db_url)() as session:
        rows = session.execute(query).all()
    return [_Span(w.rsplit("/", 1)[0], s, f, a, b) for w, s, f, a, b in rows if s is not None]
