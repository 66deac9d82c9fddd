"""The budget of a plan draft's LLM pass, kept on its `plan_drafts` row the way `shared/budget.py` keeps
a run's: the call's worst case is reserved by one conditional UPDATE before the call, and settled to
the provider's figures (or to zero, or left at the worst case) after it.

A draft makes one call, so the cap cannot be raced past by a sibling; the conditional UPDATE is kept
anyway so the rule reads the same as a run's (used + reserved + worst case <= budget, checked by the
database) and a second call added later inherits it.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import CursorResult, update
from sqlalchemy.orm import Session

from shared.errors import InvalidSpec, NotFound
from shared.models import PlanDraft, utcnow
from shared.states import PlanDraftState

BUDGET_SETTING = "AUTOPACK_PLAN_LLM_MAX_TOKENS"


@dataclass(frozen=True)
class DraftHold:
    """A draft row and what its one call reserved; settle it exactly once."""

    draft_id: int
    tokens: int


@dataclass(frozen=True)
class DraftOf:
    """Who asked for a draft's LLM pass, and for what."""

    owner: str | None
    key_id: int | None
    repo: str
    base_ref: str
    base_sha: str
    model: str


def open_draft(session: Session, of: DraftOf, *, budget: int, worst: int) -> DraftHold:
    """Insert a `refining` draft and reserve `worst` tokens on it, in the caller's transaction.

    `InvalidSpec` on `llm` naming the setting when the worst case does not fit: the caller's rollback
    then removes the row too, so a refused pass leaves nothing behind (like any 422)."""
    draft = PlanDraft(
        state=PlanDraftState.REFINING,
        token_budget=budget,
        tokens_reserved=0,
        tokens_used=0,
        owner=of.owner,
        key_id=of.key_id,
        repo=of.repo,
        base_ref=of.base_ref,
        base_sha=of.base_sha,
        model=of.model,
    )
    session.add(draft)
    session.flush()
    stmt = (
        update(PlanDraft)
        .where(PlanDraft.id == draft.id)
        .where(PlanDraft.tokens_used + PlanDraft.tokens_reserved + worst <= PlanDraft.token_budget)
        .values(tokens_reserved=PlanDraft.tokens_reserved + worst)
        .execution_options(synchronize_session=False)
    )
    if _rowcount(session.execute(stmt)) == 0:
        raise InvalidSpec(
            "llm",
            f"{BUDGET_SETTING}={budget} is below this call's worst case of {worst} tokens (the prompt's "
            "estimate plus AUTOPACK_PLAN_LLM_OUTPUT_TOKENS); nothing was sent. Raise it, or normalize "
            "without llm",
        )
    return DraftHold(draft.id, worst)


def settle_draft(session: Session, hold: DraftHold, *, tokens: int | None, usd: Decimal | None) -> None:
    """Release the reservation and add what the call used; `tokens` None charges the reserved worst
    case (the provider may have billed a call that timed out). `usd` None leaves the cost unknown."""
    used = hold.tokens if tokens is None else tokens
    values: dict[str, Any] = {
        "tokens_reserved": PlanDraft.tokens_reserved - hold.tokens,
        "tokens_used": PlanDraft.tokens_used + used,
    }
    if usd is not None:
        values["cost_usd"] = usd
    stmt = update(PlanDraft).where(PlanDraft.id == hold.draft_id).values(**values)
    if _rowcount(session.execute(stmt.execution_options(synchronize_session=False))) != 1:
        raise NotFound(f"plan draft {hold.draft_id} not found")


def finish_draft(session: Session, draft_id: int, state: PlanDraftState, error: str | None) -> PlanDraft:
    """Record how the pass ended; returns the row as stored (the response's figures come from it)."""
    draft = session.get(PlanDraft, draft_id, populate_existing=True)
    if draft is None:
        raise NotFound(f"plan draft {draft_id} not found")
    draft.state, draft.error, draft.finished_at = state, error, utcnow()
    session.flush()
    return draft


def _rowcount(result: Any) -> int:
    return cast(CursorResult[Any], result).rowcount
