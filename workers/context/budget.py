"""Spending the context budget across files by one relevance ranking, and what the selection records."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from workers.context.excerpts import (
    PartialFile,
    Region,
    outline_lines,
    region_cost,
    region_terms,
    regions_of,
)
from workers.context.load import Candidate, Listed, estimate_tokens
from workers.context.rank import PATH_WEIGHT, bm25_scores, words
from workers.context.stats import STATS

WHOLE_MAX_TOKENS = 4000
"""A file estimated above this (~16 KB) is shown as outline + excerpts unless everything fits whole."""
WHOLE_MAX_SHARE = 0.1
WHOLE_MIN_TOKENS = 1000
"""Under a tighter budget a file above `WHOLE_MAX_SHARE` of it (but never one under `WHOLE_MIN_TOKENS`,
~4 KB) is excerpted too: a relevant region should not lose to a whole file of mostly unrelated code."""
OUTLINE_SHARE = 0.1
"""Share of the budget the outlines of partially shown files may take together (split evenly)."""
SYMBOL_BONUS = 10.0
"""Added to a region whose definition is named in the goal, a deliverable or the previous failure:
a named function is what the phase is about, whatever its words say."""
BUDGET_REASON = "left out to fit the context budget"


@dataclass(frozen=True)
class ContextSelection:
    """What a prompt carries: whole files, partially shown files, and files it only lists.

    `files` are the whole files in rank order. `partial` are shown as outline + excerpts. `listed` are
    named with their size and reason (binary, generated, over the hard cap, or the budget).
    `estimated_tokens_*` are estimates (ceil(utf-8 bytes / 4)) for budgeting only, never spend:
    `kept` is what the prompt carries, `omitted` what it left out (misfit files and the unexcerpted
    rest of partial files). `skipped_paths` were never eligible (listed for what they are).
    """

    files: list[tuple[str, str]]
    kept: int
    omitted: int
    estimated_tokens_kept: int
    estimated_tokens_omitted: int
    omitted_paths: list[str]
    budget_tokens: int = 0
    skipped_paths: list[str] = field(default_factory=list)
    partial: list[PartialFile] = field(default_factory=list)
    listed: list[Listed] = field(default_factory=list)
    excerpted_bytes: int = 0
    omitted_bytes: int = 0

    @property
    def kept_paths(self) -> list[str]:
        return [path for path, _ in self.files]

    def summary(self) -> dict[str, Any]:
        """A JSON-serialisable record of the selection (paths and counts, never file contents)."""
        return {
            "budget_tokens": self.budget_tokens,
            "kept": self.kept,
            "omitted": self.omitted,
            "estimated_tokens_kept": self.estimated_tokens_kept,
            "estimated_tokens_omitted": self.estimated_tokens_omitted,
            "kept_paths": self.kept_paths,
            "omitted_paths": list(self.omitted_paths),
            "skipped_paths": list(self.skipped_paths),
            "partial_paths": [p.path for p in self.partial],
            "excerpted_bytes": self.excerpted_bytes,
            "omitted_bytes": self.omitted_bytes,
        }


def allocate(
    ranked: list[Candidate],
    listed: list[Listed],
    query: str,
    names: set[str],
    budget: int,
) -> ContextSelection:
    """Whole files if all fit; else small files whole and large ones as outline + excerpts, by rank."""
    if sum(c.tokens for c in ranked) <= budget:
        return _selection(ranked, [], [], listed, budget)
    whole_max = max(WHOLE_MIN_TOKENS, min(WHOLE_MAX_TOKENS, int(budget * WHOLE_MAX_SHARE)))
    small = [c for c in ranked if c.tokens <= whole_max]
    partial = [_partial(c) for c in ranked if c.tokens > whole_max]
    outline_cap = int(budget * OUTLINE_SHARE / len(partial)) if partial else 0
    spent = sum(_fit_outline(p, outline_cap, names) for p in partial)
    chosen = _spend(small, partial, sorted(set(words(query))), names, budget - spent)
    whole = [c for c in small if c.path in chosen]
    misfits = [c for c in small if c.path not in chosen]
    return _selection(whole, partial, misfits, listed, budget, outline_tokens=spent)


def _partial(candidate: Candidate) -> PartialFile:
    lines = candidate.text.splitlines(keepends=True)
    symbols = STATS.outline(candidate.blob, candidate.path, candidate.text)
    size = len(candidate.text.encode("utf-8"))
    return PartialFile(candidate.path, candidate.group, lines, size, symbols, blob=candidate.blob)


def _fit_outline(partial: PartialFile, cap: int, names: set[str]) -> int:
    """Render the file's outline within `cap`; returns its estimated cost."""
    if partial.outline:
        text, missing = outline_lines(partial.outline, cap, names)
        note = f"({missing} more definitions not listed)\n" if missing else ""
        partial.outline_text = text + note
    return estimate_tokens(partial.outline_text)


def _spend(
    small: list[Candidate], partial: list[PartialFile], query: list[str], names: set[str], budget: int
) -> set[str]:
    """Whole small files and regions of large ones compete in one ranking; returns the whole files kept.

    Order: relevant items (score > 0) before irrelevant ones; then group (deliverable, scope, read-only);
    then descending score; then path and line. Each item is kept while the running total fits.
    """
    by_key: dict[str, tuple[Candidate | Region, int, PartialFile | None]] = {}
    docs: dict[str, Counter[str]] = {}
    for c in small:
        by_key[c.path] = (c, c.tokens, None)
        docs[c.path] = file_terms(c)
    for p in partial:
        for r in regions_of(Candidate(p.path, p.group, "", 0), p.lines, p.outline):
            by_key[r.key] = (r, region_cost(r, p.lines), p)
            docs[r.key] = region_terms(r, p.lines, p.blob)
    scores = bm25_scores(query, docs)
    for key, (item, _, _) in by_key.items():
        if isinstance(item, Region) and item.symbol in names:
            scores[key] += SYMBOL_BONUS
    order = sorted(by_key, key=lambda k: _order(k, by_key[k][0], scores[k]))
    chosen: set[str] = set()
    total = 0
    for key in order:
        item, cost, owner = by_key[key]
        if total + cost > budget:
            continue
        total += cost
        if isinstance(item, Region) and owner is not None:
            owner.regions.append(item)
        else:
            chosen.add(key)
    return chosen


def _order(key: str, item: Candidate | Region, score: float) -> tuple[bool, int, float, str, int]:
    line = item.start if isinstance(item, Region) else 0
    return (score <= 0, item.group, -score, item.path, line)


def file_terms(candidate: Candidate) -> Counter[str]:
    terms = STATS.terms(candidate.blob, candidate.text)
    for word in path_words(candidate.path):
        terms[word] += PATH_WEIGHT
    return terms


@lru_cache(maxsize=65536)
def path_words(path: str) -> tuple[str, ...]:
    """The words of a path; a scope's paths are the same from one attempt to the next."""
    return tuple(words(path))


def _selection(
    whole: list[Candidate],
    partial: list[PartialFile],
    misfits: list[Candidate],
    listed: list[Listed],
    budget: int,
    *,
    outline_tokens: int = 0,
) -> ContextSelection:
    excerpt_tokens = sum(estimate_tokens(p.excerpt_text(s, e)) for p in partial for s, e in p.excerpts())
    excerpted = sum(p.excerpted_bytes() for p in partial)
    unexcerpted = sum(p.size - p.excerpted_bytes() for p in partial)
    misfit_bytes = sum(len(c.text.encode("utf-8")) for c in misfits)
    budget_listed = [Listed(c.path, len(c.text.encode("utf-8")), BUDGET_REASON) for c in misfits]
    return ContextSelection(
        files=[(c.path, c.text) for c in whole],
        kept=len(whole),
        omitted=len(misfits),
        estimated_tokens_kept=sum(c.tokens for c in whole) + outline_tokens + excerpt_tokens,
        estimated_tokens_omitted=sum(c.tokens for c in misfits) + -(-unexcerpted // 4),
        omitted_paths=[c.path for c in misfits],
        budget_tokens=budget,
        skipped_paths=[item.path for item in listed],
        partial=partial,
        listed=budget_listed + listed,
        excerpted_bytes=excerpted,
        omitted_bytes=misfit_bytes + unexcerpted,
    )
