"""A Markdown plan as a `RunSpec` draft for a repository at a ref, deterministic: one phase per plan
item, every inferred value with its source (`provenance`, keyed like `phases.0.scope.1`), and a warning
for everything it could not infer or did not use. The draft passes the same admission as `POST /runs`.

This module never calls a model. The optional LLM pass (`llm: true`) starts from its draft: the API
(`api/plan_llm.py`) reserves the call's budget on a `plan_drafts` row, calls the model and records the
usage like a phase's, and `shared/plans/refine.py` applies only what is safe of the answer (goals, and
scope paths that exist at the same commit), with provenance `llm: ...` and warnings for the rest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from shared.admission import admit, check_repo
from shared.errors import GitError, InvalidSpec
from shared.git import is_local, resolve_ref
from shared.plans.infer import PhasePaths, RepoTree, Sourced, looks_like_path, phase_paths, validation
from shared.plans.parse import Plan, PlanError, PlanItem, clean_title, parse_plan
from shared.settings import Settings
from shared.specs import RunSpec

BUILDER = "anthropic"
"""A plan's phases are prose goals: an LLM builder carries them out (`script` needs a command each)."""
_NAME_MAX = 40


@dataclass(frozen=True)
class PlanWarning:
    """What the draft could not infer or left out: the spec field it concerns and the plan line."""

    field: str | None
    line: int | None
    message: str


@dataclass
class Draft:
    spec: RunSpec
    tree: RepoTree
    """The repository at the resolved commit: what an LLM pass checks its paths against."""
    plan: Plan
    provenance: dict[str, str] = field(default_factory=dict)
    warnings: list[PlanWarning] = field(default_factory=list)


@dataclass
class _Builder:
    tree: RepoTree
    settings: Settings
    validation: Sourced | None
    """The toolchain's test command at the commit, the same for every phase."""
    provenance: dict[str, str] = field(default_factory=dict)
    warnings: list[PlanWarning] = field(default_factory=list)

    def warn(self, where: str | None, line: int | None, message: str) -> None:
        self.warnings.append(PlanWarning(where, line, message))

    def record(self, where: str, values: list[Sourced]) -> list[str]:
        for i, item in enumerate(values):
            self.provenance[f"{where}.{i}"] = item.source
        return [item.value for item in values]


def normalize_plan(text: str, *, repo: str, base_ref: str, name: str | None, settings: Settings) -> Draft:
    """The draft of `text` for `repo` at `base_ref`; `InvalidSpec` naming the field (and for the plan,
    the line) when there is none to give."""
    path = _local_repo(repo, settings)
    sha = _resolve(path, base_ref)
    try:
        plan = parse_plan(text)
    except PlanError as exc:
        raise InvalidSpec("plan", str(exc)) from exc
    if len(plan.items) > settings.max_phases_per_run:
        extra = plan.items[settings.max_phases_per_run]
        raise InvalidSpec("plan", f"line {extra.line}: at most {settings.max_phases_per_run} phases per run")
    tree = RepoTree.load(path, sha)
    builder = _Builder(tree, settings, validation(tree))
    body = _spec_body(plan, builder, str(path), base_ref, name)
    spec = validated(body)
    admit(spec, settings)
    return Draft(spec, tree, plan, builder.provenance, builder.warnings)


def _local_repo(repo: str, settings: Settings) -> Path:
    check_repo(repo, settings)
    if not is_local(repo):
        raise InvalidSpec("repo", "plans are read from a local repository (a path) in this version")
    return Path(repo).resolve()


def _resolve(path: Path, base_ref: str) -> str:
    """The commit `base_ref` names, as `POST /runs` resolves it."""
    try:
        return resolve_ref(str(path), base_ref)
    except GitError as exc:
        where = "repo" if "does not exist" in str(exc) or "repository" in str(exc) else "base_ref"
        raise InvalidSpec(where, f"cannot resolve {base_ref!r} in {path}: {exc}") from exc


def _spec_body(plan: Plan, b: _Builder, repo: str, base_ref: str, name: str | None) -> dict[str, Any]:
    b.provenance["base_ref"] = f"resolved to {b.tree.sha}"
    b.provenance["config.builder"] = f"{BUILDER}: the plan's phases are prose goals for an LLM builder"
    b.warn("config", None, "not inferred: models, budgets and caps are the defaults; review them")
    if name is None and plan.title:
        name = plan.title[:200]
        b.provenance["name"] = f"the plan's title, line {plan.title_line}"
    for mention in (m for m in plan.context_mentions if looks_like_path(m.text)):
        b.warn(None, mention.line, f"`{mention.text}` is mentioned outside any phase; not used")
    paths = [phase_paths(item.mentions, b.tree) for item in plan.items]
    names = _names(plan.items)
    phases = [_phase(i, item, names[i], paths, b) for i, item in enumerate(plan.items)]
    b.warn(
        "phases",
        None,
        "not inferred: read_only_context, protected_paths and network are left empty (false); "
        "add them where a phase needs them",
    )
    config = {"builder": BUILDER}
    return {"repo": repo, "base_ref": base_ref, "name": name, "config": config, "phases": phases}


def _phase(i: int, item: PlanItem, name: str, paths: list[PhasePaths], b: _Builder) -> dict[str, Any]:
    where = f"phases.{i}"
    b.provenance[f"{where}.name"] = f"title of line {item.line}: {item.title[:80]!r}"
    b.provenance[f"{where}.goal"] = f"text of the item at line {item.line}"
    goal = item.text
    if len(goal) > b.settings.max_goal_chars:
        goal = goal[: b.settings.max_goal_chars]
        b.warn(f"{where}.goal", item.line, f"cut to {b.settings.max_goal_chars} characters")
    mine = paths[i]
    for note in mine.notes:
        b.warn(f"{where}.scope", note.line, note.message)
    return {
        "name": name,
        "goal": goal,
        "scope": b.record(f"{where}.scope", mine.scope or _fallback_scope(i, item, paths, b)),
        "deliverables": b.record(f"{where}.deliverables", mine.deliverables),
        "validation": b.record(f"{where}.validation", _validation(where, item, b)),
    }


def _fallback_scope(i: int, item: PlanItem, paths: list[PhasePaths], b: _Builder) -> list[Sourced]:
    """A phase naming no usable path gets the other phases' scope (a warning says so); a plan with none
    at all cannot be a run."""
    merged: dict[str, Sourced] = {}
    for j, other in enumerate(paths):
        for s in other.scope:
            merged.setdefault(s.value, Sourced(s.value, f"no path in this phase; phase {j}'s scope"))
    if not merged:
        raise InvalidSpec(
            "plan",
            f"line {item.line}: the phase names no path that exists at {b.tree.short} and none to create "
            "(and neither does any other phase); name its files in backticks, e.g. `src/app.py`",
        )
    b.warn(f"phases.{i}.scope", item.line, "no path named in this phase: scope is the other phases' scope")
    return list(merged.values())


def _validation(where: str, item: PlanItem, b: _Builder) -> list[Sourced]:
    found = b.validation
    if found is None:
        b.warn(f"{where}.validation", item.line, f"no toolchain recognised at {b.tree.short}; none inferred")
        return []
    return [found]


def _names(items: tuple[PlanItem, ...]) -> list[str]:
    """Unique phase names from the titles: `add-subtract`, then `add-subtract-2`; `phase-3` if empty."""
    out: list[str] = []
    for i, item in enumerate(items):
        slug = re.sub(r"[^a-z0-9]+", "-", clean_title(item.title).lower()).strip("-")
        slug = slug[:_NAME_MAX].rsplit("-", 1)[0] if len(slug) > _NAME_MAX else slug
        base = slug or f"phase-{i + 1}"
        candidate, n = base, 2
        while candidate in out:
            candidate, n = f"{base}-{n}", n + 1
        out.append(candidate)
    return out


def validated(body: dict[str, Any]) -> RunSpec:
    try:
        return RunSpec.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "plan"
        raise InvalidSpec(where, f"the draft is not a valid run spec: {first['msg']}") from exc
