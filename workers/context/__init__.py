"""Which repository files a builder prompt carries, and in which form. No file in scope is silently absent.

`select_context(worktree, phase, budget_tokens, hints=...)` loads every candidate: deliverables that
exist, every file under each `scope` entry (a directory prefix or a file) and each `read_only_context`
entry; nothing under `.git`, nothing whose real location is outside the worktree (symlinks are never
followed out of it; symlinked directories are not descended into).

Every candidate appears in the prompt in exactly one of three forms, and the prompt says which and why:
- **whole**: when all readable candidates fit the budget together, all of them; otherwise each small file
  (at most `WHOLE_MAX_SHARE` of the budget, within `WHOLE_MIN_TOKENS`..`WHOLE_MAX_TOKENS`) that wins its
  place in the ranking below;
- **outline + excerpts**: a larger readable file. Its outline (definitions with line ranges, from
  tree-sitter; see `outline.py`) takes a share of the budget (`OUTLINE_SHARE`, split evenly; named
  definitions first, then shallow ones), and its regions (innermost definitions, or windows of lines)
  compete for the rest; chosen regions are shown as exact text, with `CONTEXT_LINES` around them and
  their line numbers;
- **listed only**, with its size: binary, generated, over `HARD_CAP_BYTES`, or a small file that lost its
  place to the budget.

Ranking, one for the whole budget: whole-file candidates and regions are scored together by BM25 of the
words of `phase.goal` + `phase.name` + the deliverables' paths (weighted words of paths and definition
names); a region whose definition is named in the goal, a deliverable or `hints` (the previous failure,
the advice: a failing test `test_foo` names `foo`) gains `SYMBOL_BONUS`. Items with a positive score come
first, then by group (deliverables, scope, read-only), score, path and line; each is kept while the
running total fits. Everything is pure Python and deterministic.

Token counts here are *estimates* (`ceil(utf-8 bytes / 4)`), used only to fit the budget and to record
what was left out; spend is what the provider reports. A file costs at least 1, so a budget of 0 keeps
nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

from shared.specs import PhaseSpec
from workers.context.budget import (
    OUTLINE_SHARE,
    WHOLE_MAX_SHARE,
    WHOLE_MAX_TOKENS,
    WHOLE_MIN_TOKENS,
    ContextSelection,
    allocate,
    file_terms,
)
from workers.context.excerpts import CONTEXT_LINES, PartialFile
from workers.context.load import HARD_CAP_BYTES, Candidate, Listed, estimate_tokens, load_candidates
from workers.context.rank import bm25_scores, identifiers, words

__all__ = [
    "CONTEXT_LINES",
    "HARD_CAP_BYTES",
    "OUTLINE_SHARE",
    "WHOLE_MAX_SHARE",
    "WHOLE_MAX_TOKENS",
    "WHOLE_MIN_TOKENS",
    "ContextSelection",
    "Listed",
    "PartialFile",
    "estimate_tokens",
    "rank",
    "select_context",
]


def select_context(
    worktree: Path, phase: PhaseSpec, budget_tokens: int, *, hints: str = ""
) -> ContextSelection:
    """The phase's candidate files in their forms within `budget_tokens` (see the module docstring)."""
    root = Path(os.path.realpath(worktree))
    candidates, listed = load_candidates(root, phase)
    query = "\n".join([phase.goal, phase.name, *phase.deliverables])
    names = identifiers(f"{query}\n{hints}")
    return allocate(rank(candidates, query), listed, query, names, budget_tokens)


def rank(candidates: list[Candidate], query: str) -> list[Candidate]:
    """Candidates by (group, descending whole-file relevance to `query`, path)."""
    query_terms = sorted(set(words(query)))
    scores = bm25_scores(query_terms, {c.path: file_terms(c) for c in candidates})
    return sorted(candidates, key=lambda c: (c.group, -scores[c.path], c.path))
