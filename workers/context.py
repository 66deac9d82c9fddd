"""Which repository files a builder prompt carries: load the phase's files, rank them, fit them to a budget.

`select_context(worktree, phase, budget_tokens)` loads every candidate file: deliverables that exist, every
file under each `scope` entry (a directory prefix or a file) and each `read_only_context` entry. It skips
binary files (a NUL byte in the first 8 KiB), files over 200 KB, anything under `.git`, and every path
whose real location is outside the worktree (symlinks are never followed out of it; symlinked directories
are not descended into).

Ranking: deliverables first, then scope files, then read-only files (a file in several groups counts in
the first). Within a group, files are ordered by a BM25-like lexical score of the words and identifiers of
`phase.goal` + `phase.name` against the file's path (weighted) and content; ties are broken by path.
Everything is pure Python and deterministic.

Token counts here are *estimates* (`ceil(utf-8 bytes / 4)`), used only to fit the context to the budget.
They are never stored as spend: spend is what the provider reports. A file costs at least 1 (its
header), so an empty file is not free and a budget of 0 keeps nothing.

Files are kept in rank order while the running total fits the budget; a file that does not fit is
omitted and the next (possibly smaller) files are still tried.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.specs import PhaseSpec

MAX_FILE_BYTES = 200 * 1024
BINARY_SNIFF_BYTES = 8 * 1024
PATH_WEIGHT = 3
"""A query word in a file's path counts as much as this many occurrences in its content."""

BM25_K1 = 1.2
BM25_B = 0.75

DELIVERABLE, SCOPE, READ_ONLY = 0, 1, 2
GROUP_NAMES = {DELIVERABLE: "deliverable", SCOPE: "scope", READ_ONLY: "read_only"}

_WORD = re.compile(r"[A-Za-z0-9]+")
_CAMEL = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")
_STOPWORD_TEXT = """a an and are as at be by for from in into is it its of on or that the this to with
add make use new should must will"""
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())


@dataclass(frozen=True)
class ContextSelection:
    """The files a prompt carries, in rank order, and what the budget left out.

    `estimated_tokens_*` are estimates (ceil(utf-8 bytes / 4)) for budgeting only, never spend.
    `skipped_paths` are candidates that were never eligible (binary, too large, unreadable, outside).
    """

    files: list[tuple[str, str]]
    kept: int
    omitted: int
    estimated_tokens_kept: int
    estimated_tokens_omitted: int
    omitted_paths: list[str]
    budget_tokens: int = 0
    skipped_paths: list[str] = field(default_factory=list)

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
        }


@dataclass(frozen=True)
class Candidate:
    path: str
    group: int
    text: str
    tokens: int


def estimate_tokens(text: str) -> int:
    """An estimate of the tokens `text` costs: ceil(utf-8 bytes / 4). For budgeting only."""
    return math.ceil(len(text.encode("utf-8")) / 4)


def select_context(worktree: Path, phase: PhaseSpec, budget_tokens: int) -> ContextSelection:
    """The phase's candidate files, ranked, kept in rank order while they fit `budget_tokens`."""
    root = Path(os.path.realpath(worktree))
    candidates, skipped = load_candidates(root, phase)
    ranked = rank(candidates, f"{phase.goal}\n{phase.name}")
    return fit_budget(ranked, budget_tokens, skipped)


# ------------------------------------------------------------------------------------------ loading


def load_candidates(root: Path, phase: PhaseSpec) -> tuple[list[Candidate], list[str]]:
    """Every eligible candidate file (each once, in its first group) and the paths that were skipped."""
    groups = _candidate_groups(root, phase)
    candidates: list[Candidate] = []
    skipped: list[str] = []
    for path, group in sorted(groups.items()):
        text = read_text(root, path)
        if text is None:
            skipped.append(path)
        else:
            candidates.append(Candidate(path, group, text, max(1, estimate_tokens(text))))
    return candidates, skipped


def _candidate_groups(root: Path, phase: PhaseSpec) -> dict[str, int]:
    entries = [(p, DELIVERABLE) for p in phase.deliverables]
    entries += [(p, SCOPE) for p in phase.scope] + [(p, READ_ONLY) for p in phase.read_only_context]
    groups: dict[str, int] = {}
    for entry, group in entries:
        for path in expand_entry(root, entry):
            groups[path] = min(group, groups.get(path, group))
    return groups


def expand_entry(root: Path, entry: str) -> Iterator[str]:
    """Repo-relative POSIX paths of the files `entry` names (itself, or every file below it)."""
    entry = entry.strip("/")
    if _is_git_path(entry) or not entry:
        return
    target = root / entry
    if not inside(root, target):
        return
    if target.is_file():
        yield entry
    elif target.is_dir() and not target.is_symlink():
        yield from _walk(root, target)


def _walk(root: Path, top: Path) -> Iterator[str]:
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if d != ".git")
        for name in sorted(filenames):
            path = Path(dirpath, name)
            rel = path.relative_to(root).as_posix()
            if not _is_git_path(rel) and inside(root, path):
                yield rel


def _is_git_path(rel: str) -> bool:
    return ".git" in rel.split("/")


def inside(root: Path, path: Path) -> bool:
    """Whether `path`'s real location (every symlink resolved) is `root` or below it."""
    real = Path(os.path.realpath(path))
    return real == root or root in real.parents


def read_text(root: Path, rel: str) -> str | None:
    """The file's text (undecodable bytes replaced), or None if binary, too large, unreadable or outside."""
    path = root / rel
    if not inside(root, path):
        return None
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            return None
        data = path.read_bytes()
    except OSError:
        return None
    if len(data) > MAX_FILE_BYTES or b"\x00" in data[:BINARY_SNIFF_BYTES]:
        return None
    return data.decode("utf-8", errors="replace")


# ------------------------------------------------------------------------------------------ ranking


def words(text: str) -> list[str]:
    """Lower-case words of `text`, identifiers split on `_`, case changes and digits; short/stop words out."""
    out: list[str] = []
    for chunk in _WORD.findall(text):
        parts = _CAMEL.findall(chunk) or [chunk]
        out += [p.lower() for p in parts]
        if len(parts) > 1:
            out.append(chunk.lower())  # the whole identifier matches too
    return [w for w in out if len(w) > 1 and w not in _STOPWORDS]


def document_terms(candidate: Candidate) -> Counter[str]:
    terms = Counter(words(candidate.text))
    for word in words(candidate.path):
        terms[word] += PATH_WEIGHT
    return terms


def rank(candidates: list[Candidate], query: str) -> list[Candidate]:
    """Candidates by (group, descending relevance to `query`, path)."""
    query_terms = sorted(set(words(query)))
    docs = {c.path: document_terms(c) for c in candidates}
    scores = bm25_scores(query_terms, docs)
    return sorted(candidates, key=lambda c: (c.group, -scores[c.path], c.path))


def bm25_scores(query_terms: list[str], docs: dict[str, Counter[str]]) -> dict[str, float]:
    """BM25 of each document against the query terms (idf over these documents); 0 for no overlap."""
    if not docs:
        return {}
    lengths = {path: sum(terms.values()) for path, terms in docs.items()}
    average = max(sum(lengths.values()) / len(docs), 1.0)
    idf = {term: _idf(sum(1 for terms in docs.values() if term in terms), len(docs)) for term in query_terms}
    scores: dict[str, float] = {}
    for path, terms in docs.items():
        norm = BM25_K1 * (1 - BM25_B + BM25_B * lengths[path] / average)
        score = sum(idf[t] * terms[t] * (BM25_K1 + 1) / (terms[t] + norm) for t in query_terms if terms[t])
        scores[path] = round(score, 9)  # stable ordering regardless of float noise
    return scores


def _idf(document_frequency: int, documents: int) -> float:
    return math.log(1 + (documents - document_frequency + 0.5) / (document_frequency + 0.5))


# ------------------------------------------------------------------------------------------- budget


def fit_budget(ranked: list[Candidate], budget_tokens: int, skipped: list[str]) -> ContextSelection:
    """Keep candidates in rank order while the running total fits; a misfit is omitted, later ones tried."""
    kept: list[Candidate] = []
    omitted: list[Candidate] = []
    total = 0
    for candidate in ranked:
        if total + candidate.tokens <= budget_tokens:
            kept.append(candidate)
            total += candidate.tokens
        else:
            omitted.append(candidate)
    return ContextSelection(
        files=[(c.path, c.text) for c in kept],
        kept=len(kept),
        omitted=len(omitted),
        estimated_tokens_kept=total,
        estimated_tokens_omitted=sum(c.tokens for c in omitted),
        omitted_paths=[c.path for c in omitted],
        budget_tokens=budget_tokens,
        skipped_paths=list(skipped),
    )
