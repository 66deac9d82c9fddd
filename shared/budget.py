"""Budget caps, enforced before each LLM call by reserving the call's worst case in the database.

The protocol, per call:

1. `worst_case(...)` — the most the call can cost: its input estimate plus the full output budget.
2. `reserve(...)` — ONE conditional `UPDATE runs` adds that worst case to `tokens_reserved`/`usd_reserved`,
   only if `spent + reserved + worst case` stays within each cap. The database applies the check and the
   increment atomically (Postgres re-checks the WHERE on the locked row; SQLite serialises writers), so
   concurrent workers can never commit reservations beyond the cap. Spend can exceed a cap only by the
   amount a call overran its own worst case (an input estimate that was too low): at most one call.
3. `settle(...)` — after the call (or its failure): release the reservation and add the actual spend.

Settling with an unknown figure (`None`) charges the reserved worst case for that figure: a call whose
spend the provider did not report still happened, and a cap is a promise that cannot assume it was free.
A caller that knows nothing was billed (the request never reached the provider) passes 0 instead.
This is the budget ledger only; usage telemetry (`shared.telemetry`) keeps unknown figures NULL.

A reservation taken under a lease (`epoch`) is settled only while the run's lease epoch is unchanged.
A holder that died mid-call never settles: once its lease has expired, `charge_orphaned` (run by the
reconciler) moves what is still reserved to spent — the call may have been billed — and bumps the epoch,
so a holder that was only paused finds its late `settle` fenced off instead of counting the call twice.

Prices are USD per million tokens, like `shared.llm_catalog.ModelPrice`.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from typing import Any, cast

from sqlalchemy import ColumnElement, CursorResult, func, or_, select, update
from sqlalchemy.orm import Session

from shared.errors import AutopackError, LeaseLost, NotFound
from shared.models import Run, utcnow

PER_MILLION = Decimal(1_000_000)
USD_QUANTUM = Decimal("0.000001")  # runs.usd_* are Numeric(14, 6)


class BudgetExceeded(AutopackError):
    """A call's worst case does not fit under a run's cap; the message names the cap and the figures."""

    def __init__(
        self, run_id: int, cap: str, limit: int | Decimal, ledger: Ledger, worst: int | Decimal
    ) -> None:
        spent, reserved = ledger.figures(cap)
        super().__init__(
            f"run {run_id}: {cap} cap {limit} would be exceeded: spent {spent} + reserved {reserved} "
            f"+ this call's worst case {worst} > {limit}"
        )
        self.run_id = run_id
        self.cap = cap
        self.limit = limit
        self.spent = spent
        self.reserved = reserved
        self.worst_case = worst


class UnpricedModel(BudgetExceeded):
    """A USD cap cannot be enforced on a model whose price is unknown: refused rather than reserved at $0.

    Submit refuses such a spec already; this guards the workers against a price table changed since."""

    def __init__(self, run_id: int, model: str, limit: Decimal) -> None:
        AutopackError.__init__(
            self, f"run {run_id}: usd cap {limit} cannot be enforced: {model!r} has no known price"
        )
        self.run_id = run_id
        self.cap = "usd"
        self.limit = limit


@dataclass(frozen=True)
class Reservation:
    """What one `reserve` added to the run's reserved figures; hand it to `settle` exactly once."""

    run_id: int
    tokens: int
    usd: Decimal
    epoch: int | None = None
    """The lease epoch it was taken under; None for a reservation outside any lease."""


@dataclass(frozen=True)
class Ledger:
    """A run's budget figures as stored now."""

    tokens_spent: int
    tokens_reserved: int
    usd_spent: Decimal
    usd_reserved: Decimal

    def figures(self, cap: str) -> tuple[int | Decimal, int | Decimal]:
        """(spent, reserved) of the "tokens" or the "usd" cap."""
        if cap == "tokens":
            return self.tokens_spent, self.tokens_reserved
        return self.usd_spent, self.usd_reserved


def worst_case(
    input_tokens_estimate: int, max_tokens: int, price_in: Decimal, price_out: Decimal
) -> tuple[int, Decimal]:
    """(tokens, USD) a call can cost at most: the input estimate plus the whole output budget.

    USD rounds up to the ledger's 6 places, so the reservation never under-states the worst case.
    """
    if input_tokens_estimate < 0 or max_tokens < 0:
        raise ValueError("token figures must be >= 0")
    usd = (input_tokens_estimate * price_in + max_tokens * price_out) / PER_MILLION
    return input_tokens_estimate + max_tokens, usd.quantize(USD_QUANTUM, rounding=ROUND_CEILING)


def reserve(
    session: Session,
    run_id: int,
    *,
    tokens: int,
    usd: Decimal,
    max_tokens: int | None,
    max_usd: Decimal | None,
    epoch: int | None = None,
) -> Reservation:
    """Reserve a call's worst case against the run's caps (None = no cap) or raise `BudgetExceeded`;
    with `epoch`, only while the run's lease is still at that epoch (else `LeaseLost`)."""
    if tokens < 0 or usd < 0:
        raise ValueError("a reservation must be >= 0")
    stmt = (
        update(Run)
        .where(Run.id == run_id, *_fits(tokens, usd, max_tokens, max_usd), *_fence(epoch))
        .values(tokens_reserved=Run.tokens_reserved + tokens, usd_reserved=Run.usd_reserved + usd)
        .execution_options(synchronize_session=False)
    )
    if _rowcount(session.execute(stmt)) == 0:
        if epoch is not None and _epoch(session, run_id) != epoch:
            raise LeaseLost(f"run {run_id}: lease epoch {epoch} is no longer current; nothing reserved")
        raise _refusal(session, run_id, tokens, usd, max_tokens, max_usd)
    return Reservation(run_id=run_id, tokens=tokens, usd=usd, epoch=epoch)


def settle(session: Session, reservation: Reservation, *, tokens: int | None, usd: Decimal | None) -> bool:
    """Release `reservation` and add the call's actual spend (None: charge the reserved worst case).

    False when the reservation's lease epoch has passed: `charge_orphaned` charged it already."""
    spent_tokens = reservation.tokens if tokens is None else tokens
    spent_usd = reservation.usd if usd is None else usd
    stmt = (
        update(Run)
        .where(Run.id == reservation.run_id)
        .values(
            tokens_reserved=Run.tokens_reserved - reservation.tokens,
            usd_reserved=Run.usd_reserved - reservation.usd,
            tokens_spent=Run.tokens_spent + spent_tokens,
            usd_spent=Run.usd_spent + spent_usd,
        )
        .where(*_fence(reservation.epoch))
        .execution_options(synchronize_session=False)
    )
    if _rowcount(session.execute(stmt)) == 1:
        return True
    if reservation.epoch is not None and _epoch(session, reservation.run_id) is not None:
        return False
    raise NotFound(f"run {reservation.run_id} not found")


def charge_orphaned(session: Session) -> list[int]:
    """Runs whose lease is free or expired but still hold reservations (a holder died mid-call): charge
    those as spent and bump the epoch to fence the holder off. Returns the runs charged."""
    now = utcnow()
    stmt = (
        update(Run)
        .where(
            or_(Run.tokens_reserved != 0, Run.usd_reserved != 0),
            or_(Run.lease_owner.is_(None), Run.lease_expires_at < now),
        )
        .values(
            tokens_spent=Run.tokens_spent + Run.tokens_reserved,
            usd_spent=Run.usd_spent + Run.usd_reserved,
            tokens_reserved=0,
            usd_reserved=0,
            lease_epoch=Run.lease_epoch + 1,
        )
        .returning(Run.id)
        .execution_options(synchronize_session=False)
    )
    return list(session.scalars(stmt))


def release(session: Session, reservation: Reservation) -> bool:
    """Give a reservation back unspent: the call was never sent."""
    return settle(session, reservation, tokens=0, usd=Decimal(0))


def ledger(session: Session, run_id: int) -> Ledger:
    """The run's stored budget figures (read from the database, not from the session's identity map)."""
    row = session.execute(
        select(Run.tokens_spent, Run.tokens_reserved, Run.usd_spent, Run.usd_reserved).where(Run.id == run_id)
    ).first()
    if row is None:
        raise NotFound(f"run {run_id} not found")
    return Ledger(int(row[0]), int(row[1]), Decimal(row[2]), Decimal(row[3]))


def _fence(epoch: int | None) -> list[ColumnElement[bool]]:
    return [] if epoch is None else [Run.lease_epoch == epoch]


def _epoch(session: Session, run_id: int) -> int | None:
    return session.scalar(select(Run.lease_epoch).where(Run.id == run_id))


def _fits(
    tokens: int, usd: Decimal, max_tokens: int | None, max_usd: Decimal | None
) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if max_tokens is not None:
        conditions.append(Run.tokens_spent + Run.tokens_reserved + tokens <= max_tokens)
    if max_usd is not None:
        # Rounded to the ledger's scale: SQLite stores NUMERIC as a float, whose sums drift in the 1e-17s.
        conditions.append(func.round(Run.usd_spent + Run.usd_reserved + usd, 6) <= max_usd)
    return conditions


def _refusal(
    session: Session, run_id: int, tokens: int, usd: Decimal, max_tokens: int | None, max_usd: Decimal | None
) -> BudgetExceeded:
    """The error for a refused reservation, naming the cap that does not fit (figures as read now)."""
    now = ledger(session, run_id)
    tokens_over = max_tokens is not None and now.tokens_spent + now.tokens_reserved + tokens > max_tokens
    usd_over = max_usd is not None and now.usd_spent + now.usd_reserved + usd > max_usd
    if max_tokens is not None and (tokens_over or not usd_over):
        return BudgetExceeded(run_id, "tokens", max_tokens, now, tokens)
    assert max_usd is not None  # a refusal with no cap at all cannot happen: the run exists
    return BudgetExceeded(run_id, "usd", max_usd, now, usd)


def _rowcount(result: Any) -> int:
    return cast(CursorResult[Any], result).rowcount
