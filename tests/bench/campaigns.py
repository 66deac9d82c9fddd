"""(h) Campaigns: creating a 500-child campaign through the API (against 100 single `POST /runs`, same
run), the enqueue pass that follows it, and fair share — how long an interactive run waits for its
first phase while 500 campaign phases are queued, in phase durations."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import redis
import sqlalchemy as sa

from api.client import ApiClient
from api.sample_repo import make_sample_repo
from api.serve import free_port
from shared.db import transaction
from shared.models import Run
from shared.runs import create_run
from shared.specs import RunSpec
from shared.states import PhaseState, RunState
from tests.bench.orchestration import fleet, fleet_settings, new_api_key
from tests.bench.stats import Row, Summary, ms, ratio, timed
from tests.support.procs import api_process

SECTION = "(h) campaigns"
CREATE_TARGET_MS = 1000.0
PHASE_SECONDS = 0.5
OWNER = "bench"
"""The owner of the keys `new_api_key` makes: the history runs must be visible to them."""


def sleep_spec(repo: Path, i: int, seconds: float = PHASE_SECONDS) -> dict[str, Any]:
    phase = {
        "name": "work",
        "scope": ["out.txt"],
        "command": f"sleep {seconds}; echo done > out.txt",
        "validation": ["test -f out.txt"],
    }
    return {"repo": str(repo), "name": f"bench-{i}", "phases": [phase]}


def ended_sources(db_url: str, repo: Path, n: int) -> list[int]:
    """`n` runs as history: stored as submitted, then ended DONE_FAILED (nothing executed)."""
    with transaction(db_url) as session:
        ids = [
            create_run(session, RunSpec.model_validate(sleep_spec(repo, i)), owner=OWNER).id for i in range(n)
        ]
        for run in session.scalars(sa.select(Run).where(Run.id.in_(ids))):
            run.state, run.failure_reason = RunState.DONE_FAILED, "bench history"
            run.phases[0].state = PhaseState.FAILED
        return ids


@dataclass
class CampaignBench:
    create: Summary
    single_submit: Summary
    enqueue_pass_s: float
    waits_s: list[float]
    phase_s: float
    children: int
    report_first_s: float
    report_cached: Summary

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def rows(self) -> list[Row]:
        wait = statistics.median(self.waits_s) if self.waits_s else float("nan")
        per_run = self.create.median_ms / self.children
        return [
            Row.timing(
                SECTION,
                f"POST /campaigns, {self.children} children (target <= {ms(CREATE_TARGET_MS)})",
                self.create,
                versus=f"{self.children} x POST /runs = {ms(self.single_submit.median_ms * self.children)}",
                ratio=f"{ratio(self.single_submit.median_ms, per_run):.0f}x faster per run",
            ),
            Row(SECTION, f"enqueue pass after it ({self.children} messages)", ms(self.enqueue_pass_s * 1000)),
            Row(
                SECTION,
                f"interactive submit -> first phase start, {self.children} campaign phases queued",
                ms(wait * 1000),
                n=str(len(self.waits_s)),
                versus=f"phase duration {ms(self.phase_s * 1000)}",
                ratio=f"{ratio(wait, self.phase_s):.2f} phase durations",
            ),
            Row(
                SECTION,
                "GET /campaigns/{id}/report, 10,000 pairs (500 sources x 20), first: judge + compute",
                ms(self.report_first_s * 1000),
                versus="target <= 2000.0 ms",
            ),
            Row.timing(SECTION, "GET /campaigns/{id}/report again (persisted)", self.report_cached),
        ]


def bench(
    db_url: str,
    redis_url: str,
    workdir: Path,
    logdir: Path,
    children: int = 500,
    say: Callable[[str], None] = print,
) -> CampaignBench:
    settings = fleet_settings(db_url, redis_url, workdir / "workspace")
    repo = make_sample_repo(workdir / "origin")
    sources = ended_sources(db_url, repo, children)
    key = new_api_key(db_url)
    logdir.mkdir(parents=True, exist_ok=True)
    with api_process(settings, free_port(), logdir) as url:  # no worker: creation only
        client = ApiClient(url, key)
        creates = [timed(client.create_campaign, {"source": {"run_ids": sources}}) for _ in range(3)]
        enqueue = _enqueue_pass(db_url, client, sources)
        singles = [timed(client.submit, sleep_spec(repo, i)) for i in range(100)]
        for c in client.campaigns(limit=10)["items"]:
            client.cancel_campaign(c["id"])
    redis.Redis.from_url(redis_url).flushdb()
    _cancel_queued(db_url)
    say(f"    POST /campaigns with {children} children: median {statistics.median(creates) * 1000:.0f} ms")
    waits, phase = _fair_share(settings, logdir, repo, sources)
    (logdir / "report").mkdir(exist_ok=True)
    with api_process(settings, free_port(), logdir / "report") as url:
        first, cached = _report_from_db(db_url, ApiClient(url, key), sources)
    return CampaignBench(
        Summary.of(creates), Summary.of(singles), enqueue, waits, phase, children, first, cached
    )


def _report_from_db(db_url: str, client: ApiClient, sources: list[int]) -> tuple[float, Summary]:
    """GET /campaigns/{id}/report over 10,000 pairs (500 sources x 20 repeats) whose children ended
    (set in the database: this times judging and the report, not execution): the first call judges
    every pair and computes; later calls return the persisted report."""
    created = client.create_campaign({"source": {"run_ids": sources}, "repeats": 20, "max_parallel_runs": 1})
    with sa.create_engine(db_url, poolclass=sa.pool.NullPool).begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE runs SET state = CASE WHEN id % 3 = 0 THEN 'DONE_FAILED' ELSE 'DONE_SUCCESS' END, "
                "failure_kind = CASE WHEN id % 3 = 0 THEN 'MODEL' END, held = false, "
                "started_at = now(), finished_at = now() WHERE campaign_id = :c"
            ),
            {"c": created["id"]},
        )
    first = timed(client.campaign_report, created["id"])
    return first, Summary.of([timed(client.campaign_report, created["id"]) for _ in range(5)])


def _enqueue_pass(db_url: str, client: ApiClient, sources: list[int]) -> float:
    """Seconds from sending POST /campaigns to every child's first phase being on the broker."""
    start = time.perf_counter()
    created = client.create_campaign({"source": {"run_ids": sources}})
    query = sa.text(
        "SELECT count(*) FROM phases p JOIN runs r ON r.id = p.run_id "
        "WHERE r.campaign_id = :c AND p.dispatched_at IS NULL"
    )
    engine = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
    while True:
        with engine.connect() as conn:
            if conn.execute(query, {"c": created["id"]}).scalar_one() == 0:
                return time.perf_counter() - start
        time.sleep(0.01)


def _cancel_queued(db_url: str) -> None:
    with sa.create_engine(db_url, poolclass=sa.pool.NullPool).begin() as conn:
        conn.execute(sa.text("UPDATE phases SET state = 'CANCELLED' WHERE state = 'QUEUED'"))
        conn.execute(sa.text("UPDATE runs SET state = 'CANCELLED' WHERE state = 'QUEUED'"))


def _fair_share(settings: Any, logdir: Path, repo: Path, sources: list[int]) -> tuple[list[float], float]:
    """Five interactive runs, one at a time, each submitted while the campaign's phases are queued."""
    with fleet(settings, logdir / "fair") as f:
        client = f.client
        created = client.create_campaign({"source": {"run_ids": sources}})
        while client.campaign(created["id"])["children_by_state"].get("RUNNING", 0) < 2:
            time.sleep(0.05)
        waits = [_interactive_wait(client, settings.database_url, repo, i) for i in range(5)]
        client.cancel_campaign(created["id"])
    return waits, _phase_seconds(settings.database_url, created["id"])


def _interactive_wait(client: ApiClient, db_url: str, repo: Path, i: int) -> float:
    submitted = time.time()
    run_id = client.submit(sleep_spec(repo, 10_000 + i, 0.05))["id"]
    while (started := _started(db_url, run_id)) is None:
        time.sleep(0.02)
    time.sleep(PHASE_SECONDS)
    return started.timestamp() - submitted


def _started(db_url: str, run_id: int) -> datetime | None:
    with transaction(db_url) as session:
        run = session.get(Run, run_id)
        return run.phases[0].started_at if run is not None else None


def _phase_seconds(db_url: str, campaign_id: int) -> float:
    query = sa.text(
        "SELECT extract(epoch FROM p.finished_at - p.started_at) FROM phases p"
        " JOIN runs r ON r.id = p.run_id WHERE r.campaign_id = :c AND p.state = 'COMPLETE'"
    )
    with sa.create_engine(db_url, poolclass=sa.pool.NullPool).connect() as conn:
        walls = [float(w) for w in conn.execute(query, {"c": campaign_id}).scalars()]
    return statistics.median(walls) if walls else float("nan")
