"""Regions of a large file (its definitions, or windows of lines) and how an outline + excerpts is shown."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from workers.context.load import Candidate, estimate_tokens
from workers.context.outline import Symbol
from workers.context.rank import PATH_WEIGHT, words
from workers.context.stats import STATS

MAX_REGION_LINES = 120
"""A definition longer than this is cut into windows: one relevant line should not cost a whole class."""
WINDOW_LINES = 40
"""Lines per region where no definition applies (module-level code, text files, unparsed languages)."""
CONTEXT_LINES = 3
"""Lines shown on each side of an excerpt, so a diff's hunks have the context they need to apply."""
HEADER_TOKENS = 8
"""Estimated cost of an excerpt's header line."""


@dataclass(frozen=True)
class Region:
    """Lines `start`..`end` (1-based, inclusive) of `path`, inside definition `symbol` if any."""

    path: str
    group: int
    start: int
    end: int
    symbol: str | None

    @property
    def key(self) -> str:
        return f"{self.path}:{self.start}"


@dataclass
class PartialFile:
    """A file shown as its outline and its most relevant excerpts instead of whole."""

    path: str
    group: int
    lines: list[str]
    size: int
    outline: list[Symbol] | None
    outline_text: str = ""
    regions: list[Region] = field(default_factory=list)
    blob: str = ""

    def excerpts(self) -> list[tuple[int, int]]:
        """The chosen regions widened by `CONTEXT_LINES`, merged where they touch, in line order."""
        spans: list[tuple[int, int]] = []
        for r in sorted(self.regions, key=lambda r: r.start):
            start, end = max(1, r.start - CONTEXT_LINES), min(len(self.lines), r.end + CONTEXT_LINES)
            if spans and start <= spans[-1][1] + 1:
                spans[-1] = (spans[-1][0], max(end, spans[-1][1]))
            else:
                spans.append((start, end))
        return spans

    def excerpt_text(self, start: int, end: int) -> str:
        return "".join(self.lines[start - 1 : end])

    def excerpted_bytes(self) -> int:
        return sum(len(self.excerpt_text(s, e).encode("utf-8")) for s, e in self.excerpts())


def regions_of(candidate: Candidate, lines: list[str], symbols: list[Symbol] | None) -> list[Region]:
    """The file cut into regions: innermost definitions that fit `MAX_REGION_LINES`, windows elsewhere."""
    units = _units(symbols or [])
    regions: list[Region] = []
    covered = 0
    for symbol in units:
        regions += _windows(candidate, lines, covered + 1, symbol.start - 1, None)
        regions += _windows(candidate, lines, symbol.start, symbol.end, symbol.name, MAX_REGION_LINES)
        covered = max(covered, symbol.end)
    return regions + _windows(candidate, lines, covered + 1, len(lines), None)


def _units(symbols: list[Symbol]) -> list[Symbol]:
    """Definitions that become regions whole: each one small enough, or with no definition inside it."""
    units: list[Symbol] = []
    covered = 0
    for s in symbols:
        if s.start <= covered:
            continue
        nested = any(t.depth > s.depth and s.start <= t.start and t.end <= s.end for t in symbols)
        if s.end - s.start + 1 <= MAX_REGION_LINES or not nested:
            units.append(s)
            covered = s.end
    return units


def _windows(
    candidate: Candidate, lines: list[str], start: int, end: int, symbol: str | None, size: int = WINDOW_LINES
) -> list[Region]:
    out: list[Region] = []
    for first in range(start, end + 1, size):
        last = min(end, first + size - 1)
        if any(line.strip() for line in lines[first - 1 : last]):  # blank stretches are not worth a slot
            out.append(Region(candidate.path, candidate.group, first, last, symbol))
    return out


def region_terms(region: Region, lines: list[str], blob: str = "") -> Counter[str]:
    terms = STATS.region_terms(blob, lines, region.start, region.end)
    for word in words(region.symbol or ""):
        terms[word] += PATH_WEIGHT
    for word in words(region.path):
        terms[word] += 1
    return terms


def region_cost(region: Region, lines: list[str]) -> int:
    """Estimated tokens of the region shown with its context lines and header (merging only saves)."""
    start, end = max(1, region.start - CONTEXT_LINES), min(len(lines), region.end + CONTEXT_LINES)
    return estimate_tokens("".join(lines[start - 1 : end])) + HEADER_TOKENS


def outline_lines(symbols: list[Symbol], cap_tokens: int, names: set[str]) -> tuple[str, int]:
    """The outline as text within `cap_tokens` and how many definitions did not fit: definitions named
    in `names` first, then shallow ones, then by line; shown in line order."""
    entries = {s: "  " * s.depth + f"{s.kind} {s.name}  L{s.start}-{s.end}\n" for s in symbols}
    chosen: set[Symbol] = set()
    spent = 0
    for s in sorted(symbols, key=lambda s: (s.name not in names, s.depth, s.start)):
        cost = estimate_tokens(entries[s])
        if spent + cost > cap_tokens:
            break
        chosen.add(s)
        spent += cost
    return "".join(entries[s] for s in symbols if s in chosen), len(symbols) - len(chosen)
