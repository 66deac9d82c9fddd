"""Lexical relevance: words and identifiers of a query against documents (whole files or regions)."""

from __future__ import annotations

import math
import re
from collections import Counter

PATH_WEIGHT = 3
"""A query word in a document's path or symbol name counts as much as this many occurrences in its text."""

BM25_K1 = 1.2
BM25_B = 0.75

_WORD = re.compile(r"[A-Za-z0-9]+")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{2,}")
_CAMEL = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")
_STOPWORD_TEXT = """a an and are as at be by for from in into is it its of on or that the this to with
add make use new should must will"""
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())


def words(text: str) -> list[str]:
    """Lower-case words of `text`, identifiers split on `_`, case changes and digits; short/stop words out."""
    out: list[str] = []
    for chunk in _WORD.findall(text):
        parts = _CAMEL.findall(chunk) or [chunk]
        out += [p.lower() for p in parts]
        if len(parts) > 1:
            out.append(chunk.lower())  # the whole identifier matches too
    return [w for w in out if len(w) > 1 and w not in _STOPWORDS]


def identifiers(text: str) -> set[str]:
    """Identifiers named in `text`; a test's name (`test_foo`, `TestFoo`) also names what it tests."""
    names: set[str] = set()
    for ident in _IDENT.findall(text):
        names.add(ident)
        for prefix in ("test_", "Test"):
            if ident.startswith(prefix) and len(ident) > len(prefix) + 2:
                names.add(ident[len(prefix) :])
    return names


def bm25_scores(query_terms: list[str], docs: dict[str, Counter[str]]) -> dict[str, float]:
    """BM25 of each document against the query terms (idf over these documents); 0 for no overlap."""
    if not docs:
        return {}
    lengths = {key: sum(terms.values()) for key, terms in docs.items()}
    average = max(sum(lengths.values()) / len(docs), 1.0)
    idf = {term: _idf(sum(1 for terms in docs.values() if term in terms), len(docs)) for term in query_terms}
    scores: dict[str, float] = {}
    for key, terms in docs.items():
        norm = BM25_K1 * (1 - BM25_B + BM25_B * lengths[key] / average)
        score = 0.0
        for term in query_terms:
            # `get`, not `terms[term]`: a Counter's missing key goes through a Python-level __missing__,
            # and most query terms are missing from most documents.
            if tf := terms.get(term, 0):
                score += idf[term] * tf * (BM25_K1 + 1) / (tf + norm)
        scores[key] = round(score, 9)  # stable ordering regardless of float noise
    return scores


def _idf(document_frequency: int, documents: int) -> float:
    return math.log(1 + (documents - document_frequency + 0.5) / (document_frequency + 0.5))
