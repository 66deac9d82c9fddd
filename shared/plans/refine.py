"""The LLM pass over a plan draft, without the call: the prompt, reading the answer, and applying only
what is safe of it. The call itself (budget, SDK, usage row) is `api/plan_llm.py`'s.

What the model may change, and how it is checked:
- a phase's goal: replaced (provenance `llm: <model>, plan draft <id>`), cut to `max_goal_chars`;
- a phase's scope: replaced by the paths it names that exist at the draft's commit (a file or a
  directory) or are the phase's deliverables; any other path is a warning naming it, a path of the
  deterministic scope it left out is a warning too, and the deliverables always stay in scope;
- nothing else: names, deliverables, validation and config stay as inferred, and the number of phases
  never changes (an answer with another count is not used at all).
An answer that cannot be read, or whose result would not be a valid run spec, is a `RefineError`: the
caller returns the deterministic draft with a warning giving the reason.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from shared.admission import admit
from shared.errors import InvalidSpec, RefineError
from shared.plans.draft import Draft, PlanWarning, validated
from shared.plans.infer import RepoTree
from shared.settings import Settings
from shared.specs import RepoPath, RunSpec

PLANNER_MARKER = "AUTOPACK-PLANNER"
"""Marks the system prompt, so a test simulator can route answers to this role."""
ROLE = "planner"
NEARBY_LIMIT = 300
"""Repository paths listed in the prompt at most (all of them when the repository has no more)."""
_REPO_PATH: TypeAdapter[str] = TypeAdapter(RepoPath)
_FENCED_JSON = re.compile(r"```(?:json)?\s*\n(.*?)\n```", re.DOTALL)

PLANNER_SYSTEM = f"""{PLANNER_MARKER}
You refine a run spec draft that Autopack Fleet made from a Markdown plan. Each phase of the draft will
be carried out by an LLM builder that sees only that phase's goal and the files in its scope, so a goal
must be a self-contained task and a scope must hold every file the phase has to change.

Answer with one strict JSON object and nothing else:
{{"phases": [{{"goal": "<the phase's task>", "scope": ["<repository path>", ...]}}, ...]}}

Rules:
- Exactly one entry per phase of the draft, in the draft's order.
- goal: the phase's task, precise and self-contained: what to change, where, and how to tell it is
  done. Keep every requirement the plan states for this phase and invent none.
- scope: files or directories (repository-relative) the phase must change. Use paths from the
  repository listing, or the phase's deliverables; any other path is dropped.
"""


class PhaseAnswer(BaseModel):
    """One phase of the answer; a field left out (or null) keeps the deterministic value."""

    model_config = ConfigDict(extra="ignore")

    goal: str | None = None
    scope: list[str] | None = Field(default=None, max_length=1000)


class _Answer(BaseModel):
    model_config = ConfigDict(extra="ignore")

    phases: list[PhaseAnswer]


def planner_prompt(plan_text: str, draft: Draft) -> tuple[str, list[dict[str, Any]]]:
    """The system prompt and the one user message: the plan, the draft's phases (with where each scope
    path came from) and the repository paths near them."""
    tree = draft.tree
    phases = [_phase_block(draft, i) for i in range(len(draft.spec.phases))]
    listing = "\n".join(f"- {p}" for p in nearby_paths(tree, draft.spec))
    sections = [
        f"## The plan\n{_fenced(plan_text)}",
        f"## The draft ({len(phases)} phases)\n" + "\n\n".join(phases),
        f"## Repository paths near those mentioned (at commit {tree.short})\n{listing or '(none)'}",
    ]
    return PLANNER_SYSTEM, [{"role": "user", "content": "\n\n".join(sections) + "\n"}]


def _phase_block(draft: Draft, i: int) -> str:
    phase = draft.spec.phases[i]
    scope = [
        f"- {p} ({draft.provenance.get(f'phases.{i}.scope.{k}', '?')})" for k, p in enumerate(phase.scope)
    ]
    deliverables = "\n".join(f"- {d}" for d in phase.deliverables) or "(none)"
    return "\n".join(
        [
            f"### Phase {i} `{phase.name}` (plan line {draft.plan.items[i].line})",
            f"Goal:\n{_fenced(phase.goal)}",
            "Scope:\n" + "\n".join(scope),
            f"Deliverables:\n{deliverables}",
        ]
    )


def nearby_paths(tree: RepoTree, spec: RunSpec, limit: int = NEARBY_LIMIT) -> list[str]:
    """Every file of a small repository; in a larger one, the files in the directories the scope names
    (and under a scope directory), then their parents' files, up to `limit`."""
    files = sorted(tree.blobs)
    if len(files) <= limit:
        return files
    dirs: list[str] = []
    for phase in spec.phases:
        for path in phase.scope:
            base = path.rstrip("/") if tree.is_dir(path) else str(PurePosixPath(path).parent)
            dirs += [d for d in (base, str(PurePosixPath(base).parent)) if d not in dirs]
    out: list[str] = []
    for directory in dirs:
        prefix = "" if directory == "." else directory + "/"
        out += [f for f in files if f.startswith(prefix) and "/" not in f[len(prefix) :] and f not in out]
        if len(out) >= limit:
            break
    return out[:limit]


def parse_answer(text: str, *, truncated: bool) -> list[PhaseAnswer]:
    """The phases of the answer: one JSON object, bare or in a ```json fence."""
    if truncated:
        raise RefineError("the answer was cut off at its output budget (AUTOPACK_PLAN_LLM_OUTPUT_TOKENS)")
    fenced = _FENCED_JSON.search(text)
    body = fenced.group(1) if fenced else text[text.find("{") : text.rfind("}") + 1]
    if not body.strip():
        raise RefineError(f"the answer holds no JSON object: {_clip(text)!r}")
    try:
        return _Answer.model_validate(json.loads(body)).phases
    except json.JSONDecodeError as exc:
        raise RefineError(f"the answer is not valid JSON ({exc.msg} at char {exc.pos})") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise RefineError(f"the answer is not the JSON asked for: {where}: {first['msg']}") from exc


def apply_answer(draft: Draft, answers: list[PhaseAnswer], *, source: str, settings: Settings) -> Draft:
    """A new draft with the safe part of `answers` applied (see the module docstring); `draft` is kept."""
    if len(answers) != len(draft.spec.phases):
        raise RefineError(
            f"the answer has {len(answers)} phases and the draft {len(draft.spec.phases)}; "
            "the number of phases never changes"
        )
    out = _Refined(draft, source, settings)
    body = draft.spec.model_dump(mode="json")
    for i, (phase, answer) in enumerate(zip(body["phases"], answers, strict=True)):
        if answer.goal is not None and answer.goal.strip():
            phase["goal"] = out.goal(i, answer.goal.strip())
        if answer.scope is not None:
            phase["scope"] = out.scope(i, phase, answer.scope)
    try:
        spec = validated(body)
        admit(spec, settings)
    except InvalidSpec as exc:
        raise RefineError(f"the refined draft is not a valid run spec: {exc}") from exc
    return Draft(spec, draft.tree, draft.plan, out.provenance, out.warnings)


def unrefined(draft: Draft, reason: str) -> Draft:
    """The deterministic draft, with a warning saying why the LLM pass was not applied."""
    warning = PlanWarning(
        "llm", None, f"the LLM pass was not applied: {reason}; this is the deterministic draft"
    )
    return Draft(draft.spec, draft.tree, draft.plan, dict(draft.provenance), [*draft.warnings, warning])


@dataclass
class _Refined:
    """The provenance and warnings of a draft being refined."""

    draft: Draft
    source: str
    settings: Settings

    def __post_init__(self) -> None:
        self.provenance = dict(self.draft.provenance)
        self.warnings = list(self.draft.warnings)

    def warn(self, i: int, message: str) -> None:
        self.warnings.append(PlanWarning(f"phases.{i}.scope", self.draft.plan.items[i].line, message))

    def goal(self, i: int, goal: str) -> str:
        line = self.draft.plan.items[i].line
        self.provenance[f"phases.{i}.goal"] = f"{self.source}, from the text of the item at line {line}"
        limit = self.settings.max_goal_chars
        if len(goal) > limit:
            self.warnings.append(PlanWarning(f"phases.{i}.goal", line, f"LLM goal cut to {limit} characters"))
        return goal[:limit]

    def scope(self, i: int, phase: dict[str, Any], named: list[str]) -> list[str]:
        """The paths of `named` that exist (or are deliverables), the deliverables, with provenance."""
        tree, old = self.draft.tree, list(phase["scope"])
        was = {p: self.provenance.get(f"phases.{i}.scope.{k}", "") for k, p in enumerate(old)}
        kept: dict[str, str] = {}
        for raw in named:
            path = raw.strip().rstrip("/")
            if path in kept:
                continue
            if not _repo_path(path):
                self.warn(i, f"`{raw}` named by the LLM pass is not a repository path; not in scope")
                continue
            if not (tree.is_file(path) or tree.is_dir(path) or path in phase["deliverables"]):
                self.warn(i, f"`{raw}` named by the LLM pass does not exist at {tree.short}; not in scope")
                continue
            kept[path] = was.get(path) or f"{self.source} (exists at {tree.short})"
        for deliverable in phase["deliverables"]:
            kept.setdefault(deliverable, was.get(deliverable, f"deliverable {deliverable}"))
        if not kept:
            self.warn(i, "the LLM pass named no path that exists; scope kept as inferred")
            return old
        limit = self.settings.max_list_items
        for path in [p for p in old if p not in kept] + list(kept)[limit:]:
            self.warn(i, f"`{path}` left out of scope by the LLM pass (was: {was.get(path) or 'llm'})")
        for k in range(len(old)):
            self.provenance.pop(f"phases.{i}.scope.{k}", None)
        scope = list(kept)[:limit]
        for k, path in enumerate(scope):
            self.provenance[f"phases.{i}.scope.{k}"] = kept[path]
        return scope


def _repo_path(path: str) -> bool:
    try:
        _REPO_PATH.validate_python(path)
    except ValidationError:
        return False
    return bool(path)


def _fenced(text: str) -> str:
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}\n{text.rstrip()}\n{fence}"


def _clip(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
