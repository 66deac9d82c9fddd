"""Usage telemetry, efficiency and Doctor-avoidance figures, and a run's four metric categories."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from celery import Celery
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.app import create_app
from api.sample_repo import sample_spec
from shared.db import transaction
from shared.keys import create_key
from shared.models import Attempt, EfficiencyMetric, LlmUsageEvent, PhaseMetric, utcnow
from shared.runs import create_run
from shared.settings import Settings
from shared.specs import RunSpec
from shared.telemetry import (
    DOCTOR_FALLBACK_TOKENS,
    doctor_tokens_estimate,
    record_phase_efficiency,
    record_phase_metrics,
    record_usage,
    run_metrics,
)


def new_run(url: str, repo: Path) -> tuple[int, list[int]]:
    with transaction(url) as session:
        run = create_run(session, RunSpec.model_validate(sample_spec(repo, 0)))
        return run.id, run.phase_ids


@pytest.fixture
def run(db_url: str, repo: Path) -> tuple[int, list[int]]:
    return new_run(db_url, repo)


def usage(url: str, key: str, run_id: int, phase_id: int | None, **over: Any) -> int:
    figures: dict[str, Any] = {
        "attempt_number": 1,
        "provider": "anthropic",
        "model": "claude-sonnet-4-5",
        "role": "builder",
        "input_tokens": 1000,
        "output_tokens": 200,
        "cache_read_tokens": 50,
        "cache_write_tokens": 10,
        "latency_ms": 900,
        "request_id": f"req-{key}",
        "cost_usd": Decimal("0.006188"),
    }
    figures.update(over)
    with transaction(url) as session:
        return record_usage(session, call_key=key, run_id=run_id, phase_id=phase_id, **figures).id


def race(n: int, fn: Callable[[], int]) -> list[int]:
    barrier = threading.Barrier(n)
    ids: list[int] = []
    errors: list[BaseException] = []

    def worker() -> None:
        barrier.wait()
        try:
            ids.append(fn())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors
    return ids


def count(url: str, table: str) -> int:
    with transaction(url) as session:
        return int(session.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())


# ------------------------------------------------------------------------------------------- usage


def test_usage_is_one_row_per_call_key_first_record_wins(db_url: str, run: tuple[int, list[int]]) -> None:
    run_id, phases = run
    first = usage(db_url, "run1/p0/a1/builder", run_id, phases[0])
    again = usage(db_url, "run1/p0/a1/builder", run_id, phases[0], input_tokens=5)
    assert first == again
    assert count(db_url, "llm_usage_events") == 1
    with transaction(db_url) as session:
        assert session.get_one(LlmUsageEvent, first).input_tokens == 1000


def test_usage_race_of_threads_stores_one_row_and_all_get_its_id(
    db_url: str, run: tuple[int, list[int]]
) -> None:
    run_id, phases = run
    ids = race(8, lambda: usage(db_url, "raced-call", run_id, phases[0]))
    assert len(ids) == 8 and len(set(ids)) == 1
    assert count(db_url, "llm_usage_events") == 1


def test_figures_the_provider_did_not_return_stay_null(db_url: str, run: tuple[int, list[int]]) -> None:
    run_id, phases = run
    none = dict.fromkeys(["cache_read_tokens", "cache_write_tokens", "request_id", "cost_usd"])
    row_id = usage(db_url, "nulls", run_id, phases[0], output_tokens=None, **none)
    with transaction(db_url) as session:
        row = session.get_one(LlmUsageEvent, row_id)
        assert (row.input_tokens, row.output_tokens, row.cache_read_tokens, row.cache_write_tokens) == (
            1000,
            None,
            None,
            None,
        )
        assert row.cost_usd is None and row.request_id is None


# -------------------------------------------------------------------------------------- efficiency


def test_efficiency_race_stores_one_row_and_exactly_one_caller_wrote_it(
    db_url: str, run: tuple[int, list[int]]
) -> None:
    run_id, phases = run

    def record(wall_ms: int) -> int:
        with transaction(db_url) as session:
            return int(record_phase_efficiency(session, run_id, phases[0], "SUCCEEDED", wall_ms))

    counter = iter(range(8))
    wrote = race(8, lambda: record(300 + next(counter)))
    assert sorted(wrote) == [0] * 7 + [1], "every racer but one must see its write refused"
    assert count(db_url, "efficiency_metrics") == 1
    with transaction(db_url) as session:
        stored = session.scalars(select(EfficiencyMetric.wall_ms)).one()
    assert 300 <= stored < 308


# --------------------------------------------------------------------------------- doctor estimate


def doctor(url: str, key: str, run_id: int, phase_id: int, total: int) -> None:
    usage(url, key, run_id, phase_id, role="doctor", input_tokens=total - 100, output_tokens=100)


def estimate(url: str, run_id: int) -> tuple[int, str, int]:
    with transaction(url) as session:
        return doctor_tokens_estimate(session, run_id)


def test_doctor_estimate_falls_back_global_then_run_local(db_url: str, repo: Path) -> None:
    run_a, phases_a = new_run(db_url, repo)
    run_b, phases_b = new_run(db_url, repo)
    assert estimate(db_url, run_a) == (DOCTOR_FALLBACK_TOKENS, "fallback", 0)

    for i, total in enumerate([1000, 3000]):
        doctor(db_url, f"b-{i}", run_b, phases_b[0], total)
    usage(db_url, "builder-call", run_a, phases_a[0])  # not a Doctor call: never sampled
    usage(db_url, "unknown", run_b, phases_b[0], role="doctor", output_tokens=None)  # unknown total
    assert estimate(db_url, run_a) == (2000, "global_median", 2)

    for i, total in enumerate([500, 700]):
        doctor(db_url, f"a-{i}", run_a, phases_a[0], total)
    assert estimate(db_url, run_a) == (850, "global_median", 4)  # 2 run-local calls are not enough

    doctor(db_url, "a-2", run_a, phases_a[1], 900)
    assert estimate(db_url, run_a) == (700, "run_median", 3)


def test_phase_metrics_store_the_estimate_with_its_basis_and_are_idempotent(
    db_url: str, run: tuple[int, list[int]]
) -> None:
    run_id, phases = run
    for i, total in enumerate([400, 600, 800]):
        doctor(db_url, f"d-{i}", run_id, phases[0], total)
    for _ in range(2):
        with transaction(db_url) as session:
            record_phase_metrics(session, run_id, phases[1], failure_hardening_hit=True, doctor_skipped=True)
    doctor(db_url, "d-late", run_id, phases[0], 5000)  # a later call does not move a stored estimate
    with transaction(db_url) as session:
        record_phase_metrics(session, run_id, phases[1], failure_hardening_hit=True, doctor_skipped=True)
        record_phase_metrics(session, run_id, phases[2], failure_hardening_hit=False, doctor_skipped=False)
    assert count(db_url, "phase_metrics") == 2
    with transaction(db_url) as session:
        rows = {r.phase_id: r for r in session.scalars(sa.select(PhaseMetric))}
    hit = rows[phases[1]]
    assert (hit.doctor_tokens_avoided, hit.estimate_source, hit.estimate_sample_size) == (
        600,
        "run_median",
        3,
    )
    miss = rows[phases[2]]
    assert (miss.failure_hardening_hit, miss.doctor_skipped, miss.doctor_tokens_avoided) == (
        False,
        False,
        None,
    )


# ------------------------------------------------------------------------------------------ metrics


def seed_metrics(url: str, run_id: int, phases: list[int]) -> None:
    usage(url, "c1", run_id, phases[0])
    usage(url, "c2", run_id, phases[0], input_tokens=300, output_tokens=40, cost_usd=Decimal("0.0015"))
    usage(url, "c3", run_id, phases[1], cache_read_tokens=None, cache_write_tokens=None, cost_usd=None)
    usage(url, "c4", run_id, None, role="planner", input_tokens=None, output_tokens=7)
    doctor(url, "c5", run_id, phases[1], 900)
    with transaction(url) as session:
        # Figures of its own (the sums `record_phase_efficiency` makes have a test of their own): what the
        # metrics must report is the stored row, not a recount.
        session.add_all(
            [
                EfficiencyMetric(
                    run_id=run_id, phase_id=phases[0], outcome="SUCCEEDED", tokens_spent=1,
                    tokens_avoided_context=300, attempts=1, wall_ms=1,
                ),
                EfficiencyMetric(
                    run_id=run_id, phase_id=phases[1], outcome="FAILED", tokens_spent=1,
                    tokens_avoided_context=None, attempts=2, wall_ms=1,
                ),
            ]
        )  # fmt: skip
        record_phase_metrics(session, run_id, phases[1], failure_hardening_hit=True, doctor_skipped=True)


FIGURES = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")


def test_metrics_per_call_per_phase_and_run_total_reconcile(db_url: str, run: tuple[int, list[int]]) -> None:
    run_id, phases = run
    seed_metrics(db_url, run_id, phases)
    with transaction(db_url) as session:
        metrics = run_metrics(session, run_id)
    spent = metrics["spent"]
    calls, per_phase, total = spent["calls"], spent["phases"], spent["run"]
    assert total["calls"] == len(calls) == sum(p["calls"] for p in per_phase) == 5
    for figure in FIGURES:
        from_calls = sum(c[figure] for c in calls if c[figure] is not None)
        nulls = sum(1 for c in calls if c[figure] is None)
        assert total[figure]["known"] == from_calls == sum(p[figure]["known"] for p in per_phase)
        assert total[figure]["unknown_calls"] == nulls == sum(p[figure]["unknown_calls"] for p in per_phase)
    call_cost = sum(Decimal(c["cost_usd"]) for c in calls if c["cost_usd"] is not None)
    assert (
        Decimal(total["cost_usd"]["known"])
        == call_cost
        == sum(Decimal(p["cost_usd"]["known"]) for p in per_phase)
    )
    assert total["input_tokens"] == {"known": 1000 + 300 + 1000 + 800, "unknown_calls": 1}
    assert total["cache_read_tokens"] == {"known": 50 * 4, "unknown_calls": 1}
    assert total["cost_usd"] == {"known": "0.020064", "unknown_calls": 1}
    assert [p["phase_id"] for p in per_phase] == [phases[0], phases[1], None]

    assert metrics["avoided_context"] == {"estimate": True, "tokens": 300, "rows": 2, "unknown_rows": 1}
    doctor_avoided = metrics["doctor_avoided"]
    assert (doctor_avoided["failure_hardening_hits"], doctor_avoided["doctor_skipped"]) == (1, 1)
    assert doctor_avoided["phases"][0]["estimate_source"] == "global_median"
    assert doctor_avoided["phases"][0]["estimate_sample_size"] == 1
    assert doctor_avoided["tokens"] == 900
    assert metrics["ab_deltas"]["items"] == [] and "campaign" in metrics["ab_deltas"]["note"]


# --------------------------------------------------------------------------------------------- HTTP


@pytest.fixture
def client(fleet_settings: Settings) -> Iterator[TestClient]:
    with transaction(fleet_settings.database_url) as session:
        _, key = create_key(session, "tests", admin=True)  # the runs here are made without an owner
    # As tests/test_api.py builds it, but with a bare Celery app: this route never dispatches, and
    # registering the worker tasks imports the whole LLM pipeline (~4 s).
    app = create_app(fleet_settings, Celery("autopack-test"))
    with TestClient(app, headers={"X-API-Key": key}) as c:
        yield c


def test_metrics_route_returns_the_four_categories_and_404_for_unknown_run(
    client: TestClient, fleet_settings: Settings, repo: Path
) -> None:
    run_id, phases = new_run(fleet_settings.database_url, repo)
    seed_metrics(fleet_settings.database_url, run_id, phases)
    resp = client.get(f"/runs/{run_id}/metrics")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert {"spent", "avoided_context", "doctor_avoided", "ab_deltas"} <= body.keys()
    assert body["spent"]["run"]["calls"] == 5
    assert client.get("/runs/999999/metrics").status_code == 404
    assert client.get(f"/runs/{run_id}/metrics", headers={"X-API-Key": "wrong"}).status_code == 401


def attempt_row(run_id: int, phase_id: int, number: int, context: dict[str, Any] | None) -> Attempt:
    now = utcnow()
    return Attempt(
        run_id=run_id,
        phase_id=phase_id,
        number=number,
        worker="test",
        lease_epoch=1,
        started_at=now,
        finished_at=now,
        outcome="FAILED",
        context=context,
    )


def test_phase_efficiency_sums_usage_avoided_context_and_attempts_in_the_database(
    db_url: str, run: tuple[int, list[int]]
) -> None:
    run_id, phases = run
    usage(db_url, "c1", run_id, phases[0])  # 1,000 in + 200 out
    usage(db_url, "c2", run_id, phases[0], input_tokens=None, output_tokens=40)
    usage(db_url, "c3", run_id, phases[1], input_tokens=5, output_tokens=5)  # another phase's
    contexts = [None, {"estimated_tokens_omitted": 40}, {"files": 3}, {"estimated_tokens_omitted": 2}]
    with transaction(db_url) as session:
        session.add_all(attempt_row(run_id, phases[0], n, c) for n, c in enumerate(contexts, 1))
        session.add(attempt_row(run_id, phases[1], 1, {"files": 1}))  # knew nothing of avoidance
    with transaction(db_url) as session:
        assert record_phase_efficiency(session, run_id, phases[0], "FAILED", 1234)
        assert record_phase_efficiency(session, run_id, phases[1], "FAILED", None)
        assert record_phase_efficiency(session, run_id, phases[2], "FAILED", None)  # no call, no attempt
        assert not record_phase_efficiency(session, run_id, phases[0], "FAILED", 1)  # the first stands
    with transaction(db_url) as session:
        rows = {
            r.phase_id: (r.tokens_spent, r.tokens_avoided_context, r.attempts, r.wall_ms)
            for r in session.scalars(select(EfficiencyMetric))
        }
    assert rows == {
        phases[0]: (1240, 42, 4, 1234),
        phases[1]: (10, None, 1, None),
        phases[2]: (None, None, 0, None),
    }
