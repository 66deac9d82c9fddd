"""Per-blob statistics for context ranking, cached by git blob id: a blob's words and outline never change.

A file's content is named by its git blob id (sha1 of `blob <size>\\0` + the bytes read), computed from
the bytes the loader already holds, so a modified, untracked or renamed file is keyed by what it holds
and no git process runs. Cached is what depends on the content alone: the text's word counts, its
outline (per language: the extension picks the parser) and each region's word counts. Words of paths
and definition names are added by the callers, because one blob can live at many paths.

The cache lives in the process (a worker's pool child keeps it from phase to phase, where consecutive
phases of a run and replays over one base see mostly the same blobs), holds at most `MAX_BLOBS`
entries and drops the least recently used. Callers get copies of counters, never the cached ones.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

from workers.context.outline import Symbol, language_of, outline
from workers.context.rank import words

MAX_BLOBS = 8192
"""Entries kept; a 2,000-file repository's word counts take ~30 MB, far below a pool child's pages."""


@dataclass
class _Entry:
    terms: Counter[str] | None = None
    outlines: dict[str | None, list[Symbol] | None] = field(default_factory=dict)
    regions: dict[tuple[int, int], Counter[str]] = field(default_factory=dict)


class BlobStats:
    """An LRU of per-blob statistics; thread-safe (embedded mode runs phases on threads)."""

    def __init__(self, max_blobs: int = MAX_BLOBS) -> None:
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._max = max_blobs
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def clear(self) -> None:
        """Forget every entry and reset the counts."""
        with self._lock:
            self._entries.clear()
            self.hits = self.misses = 0

    def _entry(self, blob: str) -> _Entry:
        with self._lock:
            entry = self._entries.get(blob)
            if entry is None:
                entry = self._entries[blob] = _Entry()
                while len(self._entries) > self._max:
                    self._entries.popitem(last=False)
            else:
                self._entries.move_to_end(blob)
            return entry

    def terms(self, blob: str, text: str) -> Counter[str]:
        """Word counts of `text` (whose blob id is `blob`; "" means unknown: computed, not kept)."""
        if not blob:
            return Counter(words(text))
        entry = self._entry(blob)
        if entry.terms is None:
            self.misses += 1
            entry.terms = Counter(words(text))
        else:
            self.hits += 1
        return entry.terms.copy()

    def outline(self, blob: str, path: str, text: str) -> list[Symbol] | None:
        """The outline of `text` as a file named `path` would have (parsed by its extension's language)."""
        if not blob:
            return outline(path, text)
        entry = self._entry(blob)
        language = language_of(path)
        if language not in entry.outlines:
            entry.outlines[language] = outline(path, text)
        found = entry.outlines[language]
        return None if found is None else list(found)

    def region_terms(self, blob: str, lines: list[str], start: int, end: int) -> Counter[str]:
        """Word counts of lines `start`..`end` (1-based, inclusive) of the blob's text."""
        if not blob:
            return Counter(words("".join(lines[start - 1 : end])))
        entry = self._entry(blob)
        counts = entry.regions.get((start, end))
        if counts is None:
            counts = entry.regions[(start, end)] = Counter(words("".join(lines[start - 1 : end])))
        return counts.copy()


def blob_id(data: bytes) -> str:
    """Git's id of a blob holding `data` (what `git hash-object` prints)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


STATS = BlobStats()
"""The process's cache."""
