"""Plans: a Markdown plan normalized into a run spec draft (`shared/plans`)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from api.deps import Authed, CallerDep, SessionDep, SettingsDep
from api.plan_llm import LlmPass, llm_model, refine
from api.schemas import RunId, errors
from shared.plans.draft import normalize_plan
from shared.plans.ledger import get_draft
from shared.specs import RunSpec
from shared.states import PlanDraftState

router = APIRouter(prefix="/plans", tags=["plans"], dependencies=[Authed], responses=errors(401))


class PlanIn(BaseModel):
    """A Markdown plan and the repository (a local path) and ref it is for."""

    model_config = ConfigDict(extra="forbid")

    repo: str = Field(min_length=1, max_length=2000)
    base_ref: str = Field(default="main", min_length=1, max_length=255)
    plan: str = Field(min_length=1, max_length=1_048_576, description="The plan, as Markdown.")
    name: str | None = Field(default=None, max_length=200, description="Run name (default: the title).")
    llm: bool = Field(
        default=False,
        description="After the deterministic draft, one model call refines each phase's goal and scope: "
        "its usage is recorded on a plan draft like a phase's, under AUTOPACK_PLAN_LLM_MAX_TOKENS. Only "
        "paths that exist at the commit are kept. A failed call or unusable answer gives the "
        "deterministic draft with a warning. 422 on `llm` when AUTOPACK_ANTHROPIC_API_KEY is unset or "
        "the call's worst case does not fit the budget (nothing is sent then).",
    )
    llm_model: str | None = Field(
        default=None,
        max_length=100,
        description="Model of the LLM pass (default: the first of the default builder chain).",
    )


class PlanWarningOut(BaseModel):
    field: str | None
    """The spec field concerned (`phases.2.scope`), if one."""
    line: int | None
    """The plan line (1-based), if one."""
    message: str


class PlanLlmOut(BaseModel):
    """The LLM pass of this draft: its `plan_drafts` row and what it spent (settled, exact)."""

    draft_id: int
    model: str
    state: PlanDraftState
    """`done` (applied) or `failed` (the deterministic draft was returned; `error` says why)."""
    tokens: int
    """Input + output tokens as the provider reported them (the worst case if it may have billed a
    call it did not report, e.g. a timeout)."""
    cost_usd: str | None
    """USD to 6 places; null when the model has no known price."""
    error: str | None

    @classmethod
    def of(cls, done: LlmPass) -> PlanLlmOut:
        cost = None if done.cost_usd is None else f"{done.cost_usd:.6f}"
        return cls(
            draft_id=done.draft_id,
            model=done.model,
            state=done.state,
            tokens=done.tokens_used,
            cost_usd=cost,
            error=done.error,
        )


class PlanDraftOut(BaseModel):
    spec: RunSpec
    """A run spec `POST /runs` accepts as it is."""
    provenance: dict[str, str]
    """Where each inferred value came from, keyed by its place in `spec` (`phases.0.scope.1`); a value
    the LLM pass gave says `llm: <model>, plan draft <id>`."""
    warnings: list[PlanWarningOut]
    llm: PlanLlmOut | None = None
    """Only with `llm: true`."""


@router.post("/normalize", responses=errors(400, 413))
def normalize(body: PlanIn, settings: SettingsDep, caller: CallerDep) -> PlanDraftOut:
    """A run spec draft from a Markdown plan, deterministic: one phase per numbered item or heading,
    scope from the paths it names that exist at the ref (and their test files), deliverables from
    create/add sentences, validation from the toolchain. With `llm: true`, one model call then refines
    goals and scope (see the field). 422 names the field, or the plan's line."""
    model = llm_model(settings, body.llm_model) if body.llm else None  # before any work: a 422 is cheap
    draft = normalize_plan(
        body.plan, repo=body.repo, base_ref=body.base_ref, name=body.name, settings=settings
    )
    done = None
    if model is not None:
        draft, done = refine(draft, body.plan, model=model, caller=caller, settings=settings)
    warnings = [PlanWarningOut(field=w.field, line=w.line, message=w.message) for w in draft.warnings]
    llm = None if done is None else PlanLlmOut.of(done)
    return PlanDraftOut(spec=draft.spec, provenance=draft.provenance, warnings=warnings, llm=llm)


@router.get("/drafts/{draft_id}", responses=errors(404))
def read_draft(draft_id: RunId, session: SessionDep, caller: CallerDep) -> PlanLlmOut:
    """A plan draft's LLM pass as stored: model, state (`refining` while its call is under way),
    settled tokens, cost and error. Another owner's draft is a 404."""
    return PlanLlmOut.of(LlmPass.of(get_draft(session, draft_id, caller)))
