"""Plans: a Markdown plan normalized into a run spec draft (`shared/plans`)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from api.deps import Authed, SettingsDep
from api.schemas import errors
from shared.plans.draft import normalize_plan
from shared.specs import RunSpec

router = APIRouter(prefix="/plans", tags=["plans"], dependencies=[Authed], responses=errors(401))


class PlanIn(BaseModel):
    """A Markdown plan and the repository (a local path) and ref it is for."""

    model_config = ConfigDict(extra="forbid")

    repo: str = Field(min_length=1, max_length=2000)
    base_ref: str = Field(default="main", min_length=1, max_length=255)
    plan: str = Field(min_length=1, max_length=1_048_576, description="The plan, as Markdown.")
    name: str | None = Field(default=None, max_length=200, description="Run name (default: the title).")
    llm: bool = Field(default=False, description="An LLM pass over goals and scope: refused (422) for now.")


class PlanWarningOut(BaseModel):
    field: str | None
    """The spec field concerned (`phases.2.scope`), if one."""
    line: int | None
    """The plan line (1-based), if one."""
    message: str


class PlanDraftOut(BaseModel):
    spec: RunSpec
    """A run spec `POST /runs` accepts as it is."""
    provenance: dict[str, str]
    """Where each inferred value came from, keyed by its place in `spec` (`phases.0.scope.1`)."""
    warnings: list[PlanWarningOut]


@router.post("/normalize", responses=errors(400, 413))
def normalize(body: PlanIn, settings: SettingsDep) -> PlanDraftOut:
    """A run spec draft from a Markdown plan, deterministic: one phase per numbered item or heading,
    scope from the paths it names that exist at the ref (and their test files), deliverables from
    create/add sentences, validation from the toolchain. 422 names the field, or the plan's line."""
    draft = normalize_plan(
        body.plan, repo=body.repo, base_ref=body.base_ref, name=body.name, llm=body.llm, settings=settings
    )
    warnings = [PlanWarningOut(field=w.field, line=w.line, message=w.message) for w in draft.warnings]
    return PlanDraftOut(spec=draft.spec, provenance=draft.provenance, warnings=warnings)
