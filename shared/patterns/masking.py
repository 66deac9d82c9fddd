"""Masking volatile parts of a failure line before mining, token by token (linear in the line).

A token (a whitespace-separated word, its surrounding punctuation kept) becomes `<TMP>` for a temporary
path, `<PATH>` for any other path (`a/b`, `file.py:12`), `<SHA>` for a hex id of 7-64 characters with a
digit, `<HEX>` for `0x…`, `<DUR>` for a duration (`1.5s`, `300ms`), `<NUM>` for a number. Anything else
stays as it is: the words that make a failure's shape.
"""

from __future__ import annotations

import re

MAX_LINE_CHARS = 400
"""A signature line is cut to this before masking: what shapes a failure is at the start of its line."""

_EDGE = "'\"`([{<,;)]}>"
_TMP_PREFIXES = ("/tmp/", "/var/tmp/", "/var/folders/", "/private/var/", "/dev/shm/")  # noqa: S108
_TMP_MARK = "/tmp"  # noqa: S108  (what it masks, not where it writes)
_FILE_LINE = re.compile(r"[\w.-]+\.[A-Za-z]\w*(?::\d+){1,2}:?")
_SHA = re.compile(r"[0-9a-f]{7,64}")
_HEX = re.compile(r"0x[0-9a-fA-F]+")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_DURATION = re.compile(r"\d+(?:\.\d+)?(?:ms|us|µs|ns|s|sec|secs|seconds|m|min|mins|minutes|h)")
_NUMBER = re.compile(r"[-+]?\d+(?:[.,]\d+)*%?")


def mask(line: str) -> str:
    """`line` with its volatile tokens replaced by their kind (see the module docstring)."""
    return " ".join(_mask_token(token) for token in line[:MAX_LINE_CHARS].split())


def _mask_token(token: str) -> str:
    core = token.strip(_EDGE).rstrip(".:")
    if not core:
        return token
    masked = _kind(core)
    if masked is None:
        return token
    start = token.find(core)
    return token[:start] + masked + token[start + len(core) :]


def _kind(core: str) -> str | None:
    if "/" in core or "\\" in core:
        return "<TMP>" if core.startswith(_TMP_PREFIXES) or _TMP_MARK in core else "<PATH>"
    if _FILE_LINE.fullmatch(core):
        return "<PATH>"
    if _UUID.fullmatch(core):
        return "<UUID>"
    if _HEX.fullmatch(core):
        return "<HEX>"
    if _SHA.fullmatch(core) and any(c.isdigit() for c in core) and any(c.isalpha() for c in core):
        return "<SHA>"
    if _DURATION.fullmatch(core):
        return "<DUR>"
    if _NUMBER.fullmatch(core):
        return "<NUM>"
    return None
