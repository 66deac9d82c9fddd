"""The prompts Autopack sends: the builder's (one phase's change) and the Doctor's (why an attempt failed).

Each builder returns `(system, messages)` for `LlmClient.call`. The system prompts carry a marker
(`BUILDER_MARKER`, `DOCTOR_MARKER`) so a test simulator can route answers by role. The builder's system
prompt cites `workers.change.ANSWER_FORMAT` verbatim: it is the contract the answer parser reads.
"""

from __future__ import annotations

import re

from shared.specs import PhaseSpec
from workers.change import ANSWER_FORMAT
from workers.context import ContextSelection, Listed, PartialFile

BUILDER_MARKER = "AUTOPACK-BUILDER"
DOCTOR_MARKER = "AUTOPACK-DOCTOR"
DOCTOR_ACTIONS = ("retry_with_fix", "replan", "skip_phase", "mark_fatal")

Messages = list[dict[str, str]]
LISTED_BY_NAME = 200
"""Files listed one by one before the rest are summed up per directory."""

BUILDER_SYSTEM = f"""{BUILDER_MARKER}
You are the builder of Autopack Fleet. You change a git repository so that one phase's goal is met:
its deliverables exist and its validation commands exit 0. You see the goal, the rules of this phase
and the repository's files in scope, each in one of three forms: whole; outline + excerpts (a large file:
its definitions with line ranges and its most relevant regions as exact text with their line numbers -
base a diff's hunks on that text and those numbers, and never rewrite such a file whole); or listed only.
Answer with the change only.

Rules (a change that breaks one is rejected whole and nothing is written):
- Change only paths inside the phase's scope: a scope entry is a file or a directory prefix.
- Never change a protected path, and never anything under `.git/`.
- Read-only context files are for reading; do not change them unless they are also in scope.
- Delete files only when the goal requires it; deletions are limited to a few files per change unless
  the phase allows more.
- Every deliverable must exist after your change.
- Name each file once; paths are relative to the repository root.

{ANSWER_FORMAT}
"""

DOCTOR_SYSTEM = f"""{DOCTOR_MARKER}
You are the Doctor of Autopack Fleet. A builder attempt of a coding phase failed and no known pattern
explains why. Read the phase, the failure and the log excerpt, and decide what should happen next.

Answer with one strict JSON object and nothing else:
{{"diagnosis": "<what went wrong, one or two sentences>",
 "action": "<one of: {" | ".join(DOCTOR_ACTIONS)}>",
 "advice": "<concrete instructions for the next attempt, naming files, commands or modules>"}}

Actions:
- retry_with_fix: another attempt following your advice can succeed.
- replan: the phase itself is wrong (goal, scope or validation); a person must change it.
- skip_phase: the phase's goal is already met or the phase is not needed.
- mark_fatal: the phase cannot succeed here (broken environment, impossible goal).
"""


def builder_prompt(
    phase: PhaseSpec,
    context: ContextSelection,
    *,
    attempt: int,
    previous_failure: str | None,
    advice: str | None,
) -> tuple[str, Messages]:
    """The builder's system prompt and its single user message for `attempt` (1-based) of `phase`.

    The previous failure and the advice (hardening or Doctor) are included only when `attempt > 1`.
    """
    sections = [
        f"Attempt {attempt} of phase `{phase.name}`.",
        _section("Goal", phase.goal or "(no goal text; see the phase name)"),
        _section("Deliverables (must exist afterwards)", _bullets(phase.deliverables)),
        _section("Validation commands (each must exit 0)", _bullets(phase.validation)),
        _section("Scope (the only paths you may change)", _bullets(phase.scope)),
        _section("Protected paths (never change)", _bullets([*phase.protected_paths, ".git/"])),
        _section("Read-only context", _bullets(phase.read_only_context)),
        _section("Repository files", _files_block(context)),
    ]
    if attempt > 1 and previous_failure:
        sections.append(_section("The previous attempt failed", previous_failure.strip()))
    if attempt > 1 and advice:
        sections.append(_section("Advice for this attempt", advice.strip()))
    return BUILDER_SYSTEM, [{"role": "user", "content": "\n\n".join(sections) + "\n"}]


def prompt_summary(context: ContextSelection, *, attempt: int, advice: str | None) -> str:
    """One short line describing a builder prompt, for storage next to the attempt."""
    with_advice = "with advice" if attempt > 1 and advice else "no advice"
    return (
        f"attempt {attempt}: {context.kept} files whole, {len(context.partial)} as outline + excerpts, "
        f"{context.omitted} left out for the budget, "
        f"~{context.estimated_tokens_kept} est. context tokens, {with_advice}"
    )


def doctor_prompt(phase: PhaseSpec, failure: str, log_excerpt: str) -> tuple[str, Messages]:
    """The Doctor's system prompt (marked `AUTOPACK-DOCTOR`) and its user message about one failure."""
    sections = [
        f"Phase `{phase.name}`.",
        _section("Goal", phase.goal or "(no goal text)"),
        _section("Scope", _bullets(phase.scope)),
        _section("Deliverables", _bullets(phase.deliverables)),
        _section("Validation commands", _bullets(phase.validation)),
        _section("Failure", failure.strip() or "(no reason recorded)"),
        _section("Log excerpt", _fenced(log_excerpt)),
    ]
    return DOCTOR_SYSTEM, [{"role": "user", "content": "\n\n".join(sections) + "\n"}]


# ------------------------------------------------------------------------------------------ helpers


def _section(title: str, body: str) -> str:
    return f"## {title}\n{body}"


def _bullets(items: list[str]) -> str:
    return "\n".join(f"- {item}" for item in items) if items else "(none)"


def _files_block(context: ContextSelection) -> str:
    """Every candidate file in its form: whole, outline + excerpts, or listed with its size and why."""
    parts = [f"### {path} (whole)\n{_fenced(text)}" for path, text in context.files]
    parts += [_partial_block(p) for p in context.partial]
    if context.listed:
        parts.append("### Listed only (content not shown)\n" + _listing(context.listed))
    return "\n\n".join(parts) if parts else "(no files selected)"


def _listing(listed: list[Listed]) -> str:
    """One line per listed file up to `LISTED_BY_NAME`; past it, one line per directory with its count and
    bytes, so a scope of thousands of files costs a bounded prompt yet no file goes unaccounted."""
    rows = [f"- {item.path} ({item.size:,} bytes): {item.reason}" for item in listed[:LISTED_BY_NAME]]
    rest: dict[tuple[str, str], list[int]] = {}
    for item in listed[LISTED_BY_NAME:]:
        rest.setdefault((item.path.rpartition("/")[0] or ".", item.reason), []).append(item.size)
    for (folder, reason), sizes in sorted(rest.items()):
        rows.append(f"- {folder}/: {len(sizes)} more files ({sum(sizes):,} bytes), {reason}")
    return "\n".join(rows)


def _partial_block(partial: PartialFile) -> str:
    head = (
        f"### {partial.path} (outline + excerpts: {len(partial.lines):,} lines, {partial.size:,} bytes, "
        "too large to show whole within the context budget)"
    )
    body = [head, "Outline (definition, first-last line):", _fenced(partial.outline_text or "(no outline)")]
    spans = partial.excerpts()
    if not spans:
        body.append("(no excerpt fitted the budget)")
    for start, end in spans:
        body.append(f"Excerpt, lines {start}-{end} of {partial.path} (exact text):")
        body.append(_fenced(partial.excerpt_text(start, end)))
    return "\n".join(body)


def _fenced(text: str) -> str:
    """`text` in a backtick fence longer than any backtick run inside it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    body = text if text.endswith("\n") or not text else text + "\n"
    return f"{fence}\n{body}{fence}"
