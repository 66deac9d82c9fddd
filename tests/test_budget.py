"""Budget caps: the call's worst case reserved atomically before the call, on Postgres and SQLite."""

from __future__ import annotations

import threading
from decimal import Decimal
from pathlib import Path

import pytest

from api.sample_repo import sample_spec
from shared.budget import BudgetExceeded, Reservation, ledger, release, reserve, settle, worst_case
from shared.db import transaction
from shared.runs import create_run
from shared.specs import RunSpec


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
