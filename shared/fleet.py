"""The fleet as an operator sees it: what executes, what waits, what is stuck, and aggregate metrics.

Everything here reads the database (plus the broker's queue length); the API's `/fleet` and `/metrics`
routes are thin wrappers. The Prometheus collector computes every figure from the database at scrape
time, so any number of API replicas report the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import BaseModel
from sqlalchemy import ColumnElement, Float, case, func, select, type_coerce
from sqlalchemy.orm import Session, selectinload

from shared.db import session_factory
from shared.hosts import HostView, hosts
from shared.models import Attempt, Phase, Run, WorkerHost, utcnow
from shared.states import PHASE_TERMINAL, HostState, PhaseState, RunState

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")

# Phase wall time from seconds to an hour and beyond (phases are long: builds, validations, LLM calls).
DURATION_BUCKETS: tuple[float, ...] = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600)


class ActiveTask(BaseModel):
    task_id: str | None
    run_id: int | None
    phase_id: int | None
    started_at: datetime | None


class WorkerView(BaseModel):
    name: str
    alive: bool
    pool: str | None = None
    concurrency: int | None = None
    pid: int | None = None
    tasks_total: int | None = None
    active: list[ActiveTask] = []
    sandbox: str | None = None
    """The sandbox this worker runs phase commands in, as it reports it (None: it did not say)."""


class ExecutingPhase(BaseModel):
    run_id: int
    run_name: str | None
    phase_id: int
    phase_index: int
    phase_name: str
    lease_owner: str | None
    lease_epoch: int
    started_at: datetime | None
    lease_age_seconds: float | None
    """now - the phase's started_at."""
    lease_expires_at: datetime | None
    lease_expires_in_seconds: float | None
    """Negative once the lease has expired."""
    lease_live: bool
    deliveries: int
    attempts_used: int


class RunLine(BaseModel):
    """A non-terminal run and its next phase, with why it is listed as stuck or waiting."""

    run_id: int
    run_name: str | None
    run_state: str
    phase_id: int | None
    phase_index: int | None
    phase_name: str | None
    phase_state: str | None
    dispatched_at: datetime | None
    dispatched_seconds_ago: float | None
    lease_owner: str | None
    lease_expires_at: datetime | None
    reason: str


class Redelivery(BaseModel):
    run_id: int
    phase_id: int
    phase_index: int
    phase_name: str
    phase_state: str
    deliveries: int


class FleetRecord(BaseModel):
    """The database's half of the fleet view."""

    executing: list[ExecutingPhase]
    stuck: list[RunLine]
    waiting: list[RunLine]
    redeliveries: list[Redelivery]
    hosts: list[HostView]
    """What each worker says of its own host; a SICK one has stopped consuming and says why."""


class FleetView(FleetRecord):
    generated_at: datetime
    mode: str
    sandbox: str
    """How the fleet's workers isolate phase commands (`none (…)` when the operator turned it off)."""
    workers: list[WorkerView]
    workers_error: str | None
    queue: str
    queue_length: int | None
    queue_error: str | None
    redispatch_after_seconds: float


def _seconds(later: datetime, earlier: datetime | None) -> float | None:
    return None if earlier is None else round((later - earlier).total_seconds(), 3)


def _lease_live(run: Run, now: datetime) -> bool:
    return run.lease_owner is not None and run.lease_expires_at is not None and run.lease_expires_at > now


def fleet_record(session: Session, *, redispatch_after: float, now: datetime | None = None) -> FleetRecord:
    """Executing phases, stuck and waiting runs, and phases delivered more than once.

    A run is *stuck* when its next phase is QUEUED with no pending message (never dispatched, or dispatched
    longer than `redispatch_after` seconds ago) and nobody holds its lease, or EXECUTING under an expired
    lease, or when all its phases ended but the run did not. It is *waiting* when its next phase is QUEUED
    and was dispatched recently (or its lease holder is about to dispatch it), or AWAITING_APPROVAL.
    Campaign children held for room under `max_parallel_runs` are neither: nothing is owed to them yet.
    """
    now = now or utcnow()
    stale_before = now - timedelta(seconds=redispatch_after)
    runs = session.scalars(
        select(Run)
        .where(Run.state.in_([RunState.QUEUED, RunState.RUNNING]), Run.held.is_(False))
        .options(selectinload(Run.phases))
        .order_by(Run.id)
    ).all()
    executing: list[ExecutingPhase] = []
    stuck: list[RunLine] = []
    waiting: list[RunLine] = []
    for run in runs:
        live = _lease_live(run, now)
        pending = [p for p in run.phases if PhaseState(p.state) not in PHASE_TERMINAL]
        phase = pending[0] if pending else None
        if phase is None:
            stuck.append(_line(run, None, now, "every phase ended but the run was not finished"))
            continue
        state = PhaseState(phase.state)
        if state is PhaseState.EXECUTING:
            executing.append(_executing(run, phase, now, live))
            if not live:
                owner = run.lease_owner or "nobody"
                stuck.append(
                    _line(run, phase, now, f"EXECUTING under an expired lease (last held by {owner})")
                )
            continue
        if state is PhaseState.AWAITING_APPROVAL:  # paused for a person: neither stuck nor owed a worker
            waiting.append(_line(run, phase, now, "AWAITING_APPROVAL: paused until a person decides"))
            continue
        recent = phase.dispatched_at is not None and phase.dispatched_at >= stale_before
        if recent:
            waiting.append(_line(run, phase, now, "dispatched, waiting for a worker"))
        elif live:
            waiting.append(_line(run, phase, now, f"lease held by {run.lease_owner}; dispatch follows"))
        elif phase.dispatched_at is None:
            stuck.append(_line(run, phase, now, "QUEUED, never dispatched, no live lease"))
        else:
            stuck.append(
                _line(run, phase, now, f"QUEUED, dispatched over {redispatch_after:g}s ago, no live lease")
            )
    redeliveries = [
        Redelivery(
            run_id=p.run_id,
            phase_id=p.id,
            phase_index=p.index,
            phase_name=p.name,
            phase_state=str(p.state),
            deliveries=p.deliveries,
        )
        for p in session.scalars(
            select(Phase).where(Phase.deliveries > 1).order_by(Phase.deliveries.desc(), Phase.id)
        )
    ]
    return FleetRecord(
        executing=executing, stuck=stuck, waiting=waiting, redeliveries=redeliveries, hosts=hosts(session)
    )


def _executing(run: Run, phase: Phase, now: datetime, live: bool) -> ExecutingPhase:
    expires_in = None if run.lease_expires_at is None else _seconds(run.lease_expires_at, now)
    return ExecutingPhase(
        run_id=run.id,
        run_name=run.name,
        phase_id=phase.id,
        phase_index=phase.index,
        phase_name=phase.name,
        lease_owner=run.lease_owner,
        lease_epoch=run.lease_epoch,
        started_at=phase.started_at,
        lease_age_seconds=_seconds(now, phase.started_at),
        lease_expires_at=run.lease_expires_at,
        lease_expires_in_seconds=expires_in,
        lease_live=live,
        deliveries=phase.deliveries,
        attempts_used=phase.attempts_used,
    )


def _line(run: Run, phase: Phase | None, now: datetime, reason: str) -> RunLine:
    return RunLine(
        run_id=run.id,
        run_name=run.name,
        run_state=str(run.state),
        phase_id=phase.id if phase else None,
        phase_index=phase.index if phase else None,
        phase_name=phase.name if phase else None,
        phase_state=str(phase.state) if phase else None,
        dispatched_at=phase.dispatched_at if phase else None,
        dispatched_seconds_ago=_seconds(now, phase.dispatched_at) if phase else None,
        lease_owner=run.lease_owner,
        lease_expires_at=run.lease_expires_at,
        reason=reason,
    )


def redis_queue_length(broker_url: str, keys: Sequence[str], timeout: float = 2.0) -> int:
    """The summed `LLEN` of a queue's lists: kombu's Redis transport keeps one list per priority step."""
    url = broker_url.split(";")[0].strip()
    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        return sum(int(client.llen(key)) for key in keys)
    finally:
        client.close()


def is_redis_url(broker_url: str) -> bool:
    return broker_url.startswith(REDIS_SCHEMES)


# --- Prometheus ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricCounts:
    phases: dict[str, int]
    runs: dict[str, int]
    duration_buckets: list[tuple[float, int]]
    """(upper bound, phases that took at most that long) — cumulative, without +Inf."""
    duration_count: int
    duration_sum: float
    lease_takeovers: int
    llm_infra_retries: int
    hosts: dict[str, int]
    """Worker hosts by state (HEALTHY, SICK)."""


def _duration_expr(session: Session) -> ColumnElement[float]:
    if session.get_bind().dialect.name == "sqlite":
        days = func.julianday(Phase.finished_at) - func.julianday(Phase.started_at)
        return days * 86400.0
    return type_coerce(func.extract("epoch", Phase.finished_at - Phase.started_at), Float())


def _count_infra_failures(values: Iterable[Any]) -> int:
    return sum(len(v) for v in values if isinstance(v, list))


def metric_counts(session: Session) -> MetricCounts:
    """Aggregate figures only: counts per state, phase durations, takeovers and LLM infra retries."""
    phases = {s.value: 0 for s in PhaseState}
    for phase_state, n in session.execute(select(Phase.state, func.count()).group_by(Phase.state)):
        phases[str(phase_state)] = int(n)
    runs = {s.value: 0 for s in RunState}
    for run_state, n in session.execute(select(Run.state, func.count()).group_by(Run.state)):
        runs[str(run_state)] = int(n)

    duration = _duration_expr(session)
    finished = (Phase.started_at.is_not(None), Phase.finished_at.is_not(None))
    per_bucket = [func.sum(case((duration <= b, 1), else_=0)) for b in DURATION_BUCKETS]
    row = session.execute(select(func.count(), func.sum(duration), *per_bucket).where(*finished)).one()
    count, total = int(row[0] or 0), float(row[1] or 0.0)
    buckets = [(b, int(n or 0)) for b, n in zip(DURATION_BUCKETS, row[2:], strict=True)]

    takeovers = session.execute(
        select(func.coalesce(func.sum(case((Phase.deliveries > 1, Phase.deliveries - 1), else_=0)), 0))
    ).scalar_one()
    infra_rows = session.execute(select(Attempt.infra_failures).execution_options(yield_per=1000)).scalars()
    return MetricCounts(
        phases=phases,
        runs=runs,
        duration_buckets=buckets,
        duration_count=count,
        duration_sum=total,
        lease_takeovers=int(takeovers),
        llm_infra_retries=_count_infra_failures(infra_rows),
        hosts=_host_counts(session),
    )


def _host_counts(session: Session) -> dict[str, int]:
    counts = {s.value: 0 for s in HostState}
    for host_state, n in session.execute(select(WorkerHost.state, func.count()).group_by(WorkerHost.state)):
        counts[str(host_state)] = int(n)
    return counts


class FleetCollector(Collector):
    """Builds every metric from the database at scrape time (no process-local state to disagree on)."""

    def __init__(self, db_url: str, queue_length: Callable[[], int | None]) -> None:
        self._db_url = db_url
        self._queue_length = queue_length

    def collect(self) -> Iterator[Metric]:
        with session_factory(self._db_url)() as session:
            counts = metric_counts(session)
        yield _by_state("autopack_phases", "Phases by state.", counts.phases)
        yield _by_state("autopack_runs", "Runs by state.", counts.runs)
        yield _by_state("autopack_hosts", "Worker hosts by state (SICK: out of the queue).", counts.hosts)
        length = self._queue_length()
        if length is not None:  # broker down: no figure rather than a false zero
            yield GaugeMetricFamily(
                "autopack_queue_length", "Phase messages waiting on the broker queue.", value=length
            )
        yield HistogramMetricFamily(
            "autopack_phase_duration_seconds",
            "Wall time of finished phases (started_at to finished_at).",
            buckets=[(_le(b), n) for b, n in counts.duration_buckets] + [("+Inf", counts.duration_count)],
            sum_value=counts.duration_sum,
        )
        yield CounterMetricFamily(
            "autopack_lease_takeovers",
            "Phase redeliveries: the sum over phases of deliveries - 1.",
            value=counts.lease_takeovers,
        )
        yield CounterMetricFamily(
            "autopack_llm_infra_retries",
            "LLM calls retried for infrastructure failures (429, 529, 5xx, dropped connections).",
            value=counts.llm_infra_retries,
        )


def _by_state(name: str, doc: str, counts: dict[str, int]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=["state"])
    for state, n in sorted(counts.items()):
        family.add_metric([state], n)
    return family


def _le(bound: float) -> str:
    return str(float(bound))
