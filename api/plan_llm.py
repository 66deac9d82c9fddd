"""The plan normalizer's LLM pass (`llm: true`), run inside the `POST /plans/normalize` request.

Its usage is recorded like a phase's, with a `plan_drafts` row in the run's place:
1. the call's worst case (estimated prompt + `plan_llm_output_tokens`) is reserved on a new draft row
   under `plan_llm_max_tokens`, in one transaction; a refusal rolls the row back and sends nothing;
2. the call goes through the real `anthropic` SDK client (`workers.llm.client`), with the fleet's retry
   policy and `plan_llm_timeout_seconds` per try;
3. one `llm_usage_events` row (owned by the draft) gets the provider's exact figures and the cost, and
   the reservation settles to them in the same transaction. A failed call settles at zero when the
   provider surely billed nothing, at the worst case when it may have (a timeout), as a phase's does.
The answer is applied by `shared/plans/refine.py`; a failed call or an unusable answer never fails the
request: the deterministic draft comes back with a warning, and the draft row says `failed` and why.

Synchronous on purpose: the pass is one bounded call a person waits for, not work for the fleet's
queue, and the API may import `workers.llm` (only `shared/` may not). A draft left `refining` by an API
process that died mid-call keeps its reservation: it caps nothing but itself.
"""

from __future__ import annotations

from contextlib import closing
from dataclasses import dataclass
from decimal import Decimal

from shared.db import transaction
from shared.errors import InvalidSpec, LlmError, RefineError
from shared.keys import Caller
from shared.llm_catalog import output_limit
from shared.models import PlanDraft
from shared.plans.draft import Draft
from shared.plans.ledger import DraftHold, DraftOf, finish_draft, open_draft, settle_draft
from shared.plans.refine import ROLE, apply_answer, parse_answer, planner_prompt, unrefined
from shared.settings import Settings
from shared.specs import ModelConfig
from shared.states import PlanDraftState
from shared.telemetry import record_usage
from workers.llm.client import DEFAULT_PRICE_TABLE, LlmResponse, client_for
from workers.llm.gateway import estimate_tokens, maybe_billed, spent_tokens, usage_figures

KEY_SETTING = "AUTOPACK_ANTHROPIC_API_KEY"


@dataclass(frozen=True)
class LlmPass:
    """What the response says of the pass: its draft row's id, model, outcome and settled spend."""

    draft_id: int
    model: str
    state: PlanDraftState
    tokens_used: int
    cost_usd: Decimal | None
    error: str | None

    @classmethod
    def of(cls, row: PlanDraft) -> LlmPass:
        return cls(row.id, row.model, row.state, row.tokens_used, row.cost_usd, row.error)


def llm_model(settings: Settings, model: str | None) -> str:
    """The model the pass will call, or `InvalidSpec` before anything is read or stored: no key
    configured (on `llm`, naming the setting), or a model the fleet cannot budget (on `llm_model`)."""
    key = settings.anthropic_api_key
    if key is None or not key.get_secret_value():
        raise InvalidSpec("llm", f"{KEY_SETTING} is not set: the LLM pass needs a Messages API key")
    chosen = model or ModelConfig().builder[0]  # the cheapest model of the default builder chain
    limit = output_limit(chosen)
    if limit is None:
        raise InvalidSpec("llm_model", f"unknown model {chosen!r}")
    if settings.plan_llm_output_tokens > limit:
        raise InvalidSpec(
            "llm_model",
            f"{chosen!r} accepts at most {limit} output tokens; "
            f"AUTOPACK_PLAN_LLM_OUTPUT_TOKENS is {settings.plan_llm_output_tokens}",
        )
    return chosen


def refine(
    draft: Draft, plan_text: str, *, model: str, caller: Caller, settings: Settings
) -> tuple[Draft, LlmPass]:
    """The draft refined by `model` (or the deterministic one with a warning), and the pass's record."""
    client = client_for(settings, settings.plan_llm_timeout_seconds)
    if client is None:  # `llm_model` refused this already; checked again before any row exists
        raise InvalidSpec("llm", f"{KEY_SETTING} is not set")
    system, messages = planner_prompt(plan_text, draft)
    worst = estimate_tokens(system, messages) + settings.plan_llm_output_tokens
    with closing(client):
        with transaction(settings.database_url) as session:
            of = DraftOf(
                caller.owner, caller.key_id, draft.spec.repo, draft.spec.base_ref, draft.tree.sha, model
            )
            hold = open_draft(session, of, budget=settings.plan_llm_max_tokens, worst=worst)
        try:
            response = client.call(model, system, messages, settings.plan_llm_output_tokens)
        except Exception as exc:
            failed = _failed_call(settings, hold, exc)
            if not isinstance(exc, LlmError):
                raise
            return unrefined(draft, f"the model call failed: {exc}"), failed
    _record(settings, hold, model, response)
    source = f"llm: {response.model or model}, plan draft {hold.draft_id}"
    try:
        answers = parse_answer(response.text, truncated=response.truncated)
        refined = apply_answer(draft, answers, source=source, settings=settings)
    except RefineError as exc:
        return unrefined(draft, exc.reason), _finish(settings, hold, PlanDraftState.FAILED, exc.reason)
    except Exception as exc:  # a bug here must not leave the row `refining`; the usage is recorded
        _finish(settings, hold, PlanDraftState.FAILED, f"internal error applying the answer: {exc!r}")
        raise
    return refined, _finish(settings, hold, PlanDraftState.DONE, None)


def _failed_call(settings: Settings, hold: DraftHold, exc: Exception) -> LlmPass:
    """Settle a call that raised: its worst case if the provider may have billed it, else zero."""
    billed = maybe_billed(exc)
    with transaction(settings.database_url) as session:
        settle_draft(session, hold, tokens=None if billed else 0, usd=None if billed else Decimal(0))
        return LlmPass.of(finish_draft(session, hold.draft_id, PlanDraftState.FAILED, str(exc)))


def _record(settings: Settings, hold: DraftHold, model: str, response: LlmResponse) -> None:
    """The usage row, with the provider's exact figures, and the reservation settled to them."""
    cost = DEFAULT_PRICE_TABLE.cost_usd(model, response.usage)
    with transaction(settings.database_url) as session:
        settle_draft(session, hold, tokens=spent_tokens(response), usd=cost)
        record_usage(
            session,
            call_key=f"plan{hold.draft_id}:{ROLE}:1",
            run_id=None,
            plan_draft_id=hold.draft_id,
            phase_id=None,
            attempt_number=None,
            role=ROLE,
            cost_usd=cost,
            **usage_figures(response, model),
        )


def _finish(settings: Settings, hold: DraftHold, state: PlanDraftState, error: str | None) -> LlmPass:
    with transaction(settings.database_url) as session:
        return LlmPass.of(finish_draft(session, hold.draft_id, state, error))
