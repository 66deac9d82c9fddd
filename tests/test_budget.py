"""Budget caps: the call's worst case reserved atomically before the call, on Postgres and SQLite."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import select, update

from api.sample_repo import sample_spec
from shared.budget import (
    BudgetExceeded,
    Reservation,
    UnpricedModel,
    ledger,
    release,
    reserve,
    settle,
    worst_case,
)
from shared.db import transaction
from shared.errors import LlmInfraError, LlmRequestError
from shared.models import EfficiencyMetric, LlmUsageEvent, Run, utcnow
from shared.outbox import reconcile
from shared.runs import create_run
from shared.specs import RunSpec
from shared.telemetry import record_phase_efficiency, record_usage
from tests.support.simulator import MessagesSimulator, Scripted
from tests.test_outbox import RecordingDispatcher
from workers.lease import Lease, acquire
from workers.llm.client import DEFAULT_PRICE_TABLE, LlmClient, RetryPolicy
from workers.llm.gateway import LlmGateway, estimate_tokens


@pytest.fixture
def run_id(db_url: str, repo: Path) -> int:
    with transaction(db_url) as session:
        return create_run(session, RunSpec.model_validate(sample_spec(repo, 0))).id


def test_worst_case_is_input_estimate_plus_output_budget_priced_per_million() -> None:
    tokens, usd = worst_case(1000, 4000, Decimal(3), Decimal(15))
    assert tokens == 5000
    assert usd == Decimal("0.063000")
    assert worst_case(1, 0, Decimal("0.3"), Decimal(0))[1] == Decimal("0.000001")  # rounds up, never down


def test_reservation_that_would_exceed_the_token_cap_is_refused_naming_it(db_url: str, run_id: int) -> None:
    with transaction(db_url) as session:
        reserve(session, run_id, tokens=300, usd=Decimal("0.5"), max_tokens=450, max_usd=None)
    with pytest.raises(BudgetExceeded) as refused, transaction(db_url) as session:
        reserve(session, run_id, tokens=200, usd=Decimal(0), max_tokens=450, max_usd=None)
    err = refused.value
    assert (err.cap, err.limit, err.spent, err.reserved, err.worst_case) == ("tokens", 450, 0, 300, 200)
    assert "tokens cap 450" in str(err) and "reserved 300" in str(err) and "worst case 200" in str(err)
    with transaction(db_url) as session:
        assert ledger(session, run_id).tokens_reserved == 300


def test_reservation_that_would_exceed_the_usd_cap_is_refused_naming_it(db_url: str, run_id: int) -> None:
    with transaction(db_url) as session:
        reserve(session, run_id, tokens=10, usd=Decimal("0.7"), max_tokens=None, max_usd=Decimal(1))
        reserve(session, run_id, tokens=10, usd=Decimal("0.3"), max_tokens=None, max_usd=Decimal(1))
    usd_cap = pytest.raises(BudgetExceeded, match=r"usd cap 1 .*worst case 0\.000001")
    with usd_cap as refused, transaction(db_url) as session:
        reserve(session, run_id, tokens=0, usd=Decimal("0.000001"), max_tokens=1000, max_usd=Decimal(1))
    assert refused.value.cap == "usd"


def test_settle_moves_reserved_to_spent_and_unknown_figures_charge_the_worst_case(
    db_url: str, run_id: int
) -> None:
    with transaction(db_url) as session:
        first = reserve(session, run_id, tokens=100, usd=Decimal("0.2"), max_tokens=1000, max_usd=Decimal(5))
        second = reserve(session, run_id, tokens=50, usd=Decimal("0.1"), max_tokens=1000, max_usd=Decimal(5))
        third = reserve(session, run_id, tokens=70, usd=Decimal("0.4"), max_tokens=1000, max_usd=Decimal(5))
    with transaction(db_url) as session:
        settle(session, first, tokens=60, usd=Decimal("0.123456"))
        settle(session, second, tokens=None, usd=None)
        release(session, third)
    with transaction(db_url) as session:
        now = ledger(session, run_id)
    assert (now.tokens_spent, now.tokens_reserved) == (110, 0)
    assert (now.usd_spent, now.usd_reserved) == (Decimal("0.223456"), Decimal(0))


def test_eight_racing_reservations_of_100_under_a_cap_of_450_exactly_four_succeed(
    db_url: str, run_id: int
) -> None:
    barrier = threading.Barrier(8)
    granted: list[Reservation] = []
    refused: list[BudgetExceeded] = []
    seen_totals: list[int] = []

    def worker() -> None:
        barrier.wait()
        try:
            with transaction(db_url) as session:
                granted.append(
                    reserve(session, run_id, tokens=100, usd=Decimal(0), max_tokens=450, max_usd=None)
                )
                now = ledger(session, run_id)
                seen_totals.append(now.tokens_spent + now.tokens_reserved)
        except BudgetExceeded as exc:
            refused.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert (len(granted), len(refused)) == (4, 4)
    assert all(total <= 450 for total in seen_totals)
    with transaction(db_url) as session:
        now = ledger(session, run_id)
        assert now.tokens_spent + now.tokens_reserved == 400
        for reservation in granted:
            settle(session, reservation, tokens=100, usd=Decimal(0))
    with transaction(db_url) as session:
        assert (ledger(session, run_id).tokens_spent, ledger(session, run_id).tokens_reserved) == (400, 0)


# --- reservations of calls that never settled ------------------------------------------------------


def expire_lease(db_url: str, run_id: int) -> None:
    with transaction(db_url) as session:
        past = utcnow() - timedelta(seconds=1)
        session.execute(update(Run).where(Run.id == run_id).values(lease_expires_at=past))


def test_reservation_of_a_crashed_call_is_charged_by_the_reconciler_once_the_lease_expires(
    db_url: str, run_id: int
) -> None:
    lease = acquire(db_url, run_id, "worker-that-dies", ttl=30)
    assert lease is not None
    with transaction(db_url) as session:
        held = reserve(
            session, run_id, tokens=500, usd=Decimal("0.25"), max_tokens=1000, max_usd=None, epoch=lease.epoch
        )
    dispatcher = RecordingDispatcher(waiting=set())
    reconcile(db_url, dispatcher, redispatch_after=60)
    with transaction(db_url) as session:
        assert ledger(session, run_id).tokens_reserved == 500  # the lease is live: the call may be running

    expire_lease(db_url, run_id)
    reconcile(db_url, dispatcher, redispatch_after=60)
    with transaction(db_url) as session:
        now = ledger(session, run_id)
    # Released from "reserved", and charged: the provider may have run the call to the end.
    assert (now.tokens_reserved, now.usd_reserved) == (0, Decimal(0))
    assert (now.tokens_spent, now.usd_spent) == (500, Decimal("0.25"))

    with transaction(db_url) as session:  # the holder was only paused: its late settle counts nothing twice
        assert settle(session, held, tokens=120, usd=Decimal("0.01")) is False
        assert ledger(session, run_id) == now
    with pytest.raises(Exception, match="no longer current"), transaction(db_url) as session:
        reserve(session, run_id, tokens=1, usd=Decimal(0), max_tokens=None, max_usd=None, epoch=lease.epoch)


# --- the gateway: what a failed call settles --------------------------------------------------------


@pytest.fixture
def pg_run(pg: str, repo: Path) -> tuple[str, int, Lease]:
    with transaction(pg) as session:
        run = create_run(session, RunSpec.model_validate(sample_spec(repo, 0)))
    lease = acquire(pg, run.id, "gateway-test", ttl=30)
    assert lease is not None
    return pg, run.id, lease


def gateway(
    pg_run: tuple[str, int, Lease],
    sim: MessagesSimulator,
    tokens: int | None = None,
    usd: Decimal | None = None,
) -> LlmGateway:
    db_url, run_id, lease = pg_run
    client = LlmClient("sk-test", sim.base_url, 0.5, RetryPolicy(max_retries=0))
    return LlmGateway(db_url, client, run_id, 1, lease.epoch, tokens, usd)


MESSAGES = [{"role": "user", "content": "add greet()"}]


def call(gw: LlmGateway, model: str = "claude-haiku-4-5") -> None:
    gw.call(role="builder", attempt=1, model=model, system="sys", messages=MESSAGES, max_tokens=2000)


def run_ledger(pg_run: tuple[str, int, Lease]) -> tuple[int, int, Decimal, Decimal]:
    with transaction(pg_run[0]) as session:
        now = ledger(session, pg_run[1])
    return now.tokens_spent, now.tokens_reserved, now.usd_spent, now.usd_reserved


def test_a_call_that_timed_out_settles_its_reserved_worst_case(pg_run: tuple[str, int, Lease]) -> None:
    with MessagesSimulator([Scripted(delay=2.0)]) as sim, pytest.raises(LlmInfraError, match="timeout"):
        call(gateway(pg_run, sim, tokens=100000))
    price = DEFAULT_PRICE_TABLE.price_for("claude-haiku-4-5")
    assert price is not None
    tokens, usd = worst_case(estimate_tokens("sys", MESSAGES), 2000, price.input, price.output)
    assert run_ledger(pg_run) == (tokens, 0, usd, Decimal(0))


def test_a_request_the_provider_rejected_settles_at_zero(pg_run: tuple[str, int, Lease]) -> None:
    rejected = Scripted(status=400, error_message="max_tokens: 2000 > 1024, the maximum")
    with MessagesSimulator([rejected]) as sim, pytest.raises(LlmRequestError, match="the maximum"):
        call(gateway(pg_run, sim, tokens=100000))
    assert run_ledger(pg_run) == (0, 0, Decimal(0), Decimal(0))


def test_a_model_without_a_price_is_refused_under_a_usd_cap_before_any_request(
    pg_run: tuple[str, int, Lease],
) -> None:
    with MessagesSimulator([Scripted()]) as sim:
        with pytest.raises(UnpricedModel, match="no known price"):
            call(gateway(pg_run, sim, usd=Decimal(5)), model="claude-sonnet-4-9")
        assert sim.requests == []
    assert run_ledger(pg_run) == (0, 0, Decimal(0), Decimal(0))


def test_a_call_recorded_after_another_holder_ended_the_phase_is_counted_in_its_efficiency_row(
    pg_run: tuple[str, int, Lease],
) -> None:
    """A frozen holder's call answers after it was taken over and after the new holder's terminal
    transaction summed the phase's usage into the efficiency row: the late usage row is recounted
    into that row, so per phase, efficiency = the sum of usage rows (the chaos batch's check)."""
    db_url, run_id, _ = pg_run
    late = Scripted(usage={"input_tokens": 100, "output_tokens": 20}, delay=1.0)
    with MessagesSimulator([late]) as sim:
        client = LlmClient("sk-test", sim.base_url, 30, RetryPolicy(max_retries=0))
        gw = LlmGateway(db_url, client, run_id, 1, pg_run[2].epoch, None, None)
        frozen = threading.Thread(target=call, args=(gw,))
        frozen.start()
        while not sim.requests:  # the call is in flight
            time.sleep(0.01)
        expire_lease(db_url, run_id)
        reconcile(db_url, RecordingDispatcher(waiting=set()), redispatch_after=60)  # charged, epoch bumped
        with transaction(db_url) as session:  # the new holder's own call, then its terminal transaction
            record_usage(
                session, call_key="new-holder", run_id=run_id, phase_id=1, attempt_number=1,
                provider="anthropic", model="claude-haiku-4-5", role="builder", input_tokens=50,
                output_tokens=10, cache_read_tokens=None, cache_write_tokens=None, latency_ms=1,
                request_id=None, cost_usd=None,
            )  # fmt: skip
            record_phase_efficiency(session, run_id, 1, "COMPLETE", 1)  # sums the 60 recorded so far
        frozen.join(10)
    with transaction(db_url) as session:
        spent = session.scalar(select(EfficiencyMetric.tokens_spent).where(EfficiencyMetric.phase_id == 1))
        usage = session.scalars(select(LlmUsageEvent.input_tokens).where(LlmUsageEvent.phase_id == 1)).all()
    assert sorted(usage) == [50, 100]
    assert spent == 60 + 120
