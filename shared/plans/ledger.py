"""The budget of a plan draft's LLM pass, kept on its `plan_drafts` row the way `shared/budget.py` keeps
a run's: the call's worst case is reserved by one conditional UPDATE before the call, and settled to
the provider's figures (or to zero, or left at the worst case) after it.

A draft makes one call, so the cap cannot be raced past by a sibling; the conditional UPDATE is kept
anyway so the rule reads the same as a run's (used + reserved + worst case <= budget, checked by the
database) and a second call added later inherits it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session

from shared.errors import InvalidSpec, NotFound
from shared.keys import Caller, owned_by
from shared.models import PlanDraft, utcnow
from shared.settings import Settings
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


def settle_draft(session: Session, hold: DraftHold, *, tokens: int | None, usd: Decimal | None) -> bool:
    """Release the reservation and add what the call used; `tokens` None charges the reserved worst
    case (the provider may have billed a call that timed out). `usd` None leaves the cost unknown.

    False when the draft is no longer `refining`: `abandon_stale` charged its reservation already (the
    API process looked dead), so settling again would count the call twice."""
    used = hold.tokens if tokens is None else tokens
    values: dict[str, Any] = {
        "tokens_reserved": PlanDraft.tokens_reserved - hold.tokens,
        "tokens_used": PlanDraft.tokens_used + used,
    }
    if usd is not None:
        values["cost_usd"] = usd
    stmt = (
        update(PlanDraft)
        .where(PlanDraft.id == hold.draft_id, PlanDraft.state == PlanDraftState.REFINING)
        .values(**values)
    )
    if _rowcount(session.execute(stmt.execution_options(synchronize_session=False))) == 1:
        return True
    if session.get(PlanDraft, hold.draft_id) is None:
        raise NotFound(f"plan draft {hold.draft_id} not found")
    return False


def finish_draft(session: Session, draft_id: int, state: PlanDraftState, error: str | None) -> PlanDraft:
    """Record how the pass ended, unless `abandon_stale` ended it first; returns the row as stored (the
    response's figures come from it)."""
    draft = session.get(PlanDraft, draft_id, populate_existing=True)
    if draft is None:
        raise NotFound(f"plan draft {draft_id} not found")
    if draft.state == PlanDraftState.REFINING:
        draft.state, draft.error, draft.finished_at = state, error, utcnow()
        session.flush()
    return draft


def longest_call(settings: Settings) -> timedelta:
    """The longest a draft's call can take with every retry and wait, and a minute more: a draft still
    `refining` after that has no live process behind it."""
    tries = settings.llm_max_retries + 1
    waits = settings.llm_max_retries * max(
        settings.llm_backoff_cap_seconds, settings.llm_retry_after_cap_seconds
    )
    return timedelta(seconds=settings.plan_llm_timeout_seconds * tries + waits + 60)


ABANDONED = "the API process making this draft's call stopped answering; its reservation is charged"


def abandon_stale(session: Session, opened_before: datetime) -> list[int]:
    """Drafts still `refining` that were opened before `opened_before` (longer ago than a call with every
    retry can take): the API process died mid-call. Their reservation is charged as used, since the
    provider may have billed the call, and they end `failed` saying so; a late settle from a process
    that was only slow is then refused (`settle_draft`). Run by the reconciler. Returns their ids."""
    stmt = (
        update(PlanDraft)
        .where(PlanDraft.state == PlanDraftState.REFINING, PlanDraft.created_at < opened_before)
        .values(
            tokens_used=PlanDraft.tokens_used + PlanDraft.tokens_reserved,
            tokens_reserved=0,
            state=PlanDraftState.FAILED,
            error=ABANDONED,
            finished_at=utcnow(),
        )
        .returning(PlanDraft.id)
        .execution_options(synchronize_session=False)
    )
    return list(session.scalars(stmt))


def get_draft(session: Session, draft_id: int, caller: Caller | None) -> PlanDraft:
    """The draft; NotFound also when another owner asked for it (as for runs)."""
    draft = session.scalars(
        owned_by(select(PlanDraft), caller, PlanDraft.owner).where(PlanDraft.id == draft_id)
    ).first()
    if draft is None:
        raise NotFound(f"plan draft {draft_id} not found")
    return draft


def _rowcount(result: Any) -> int:
    return cast(CursorResult[Any], result).rowcount
