"""Rule regexes: RE2 syntax, compiled by RE2, so a search is linear in the text whatever the pattern.

RE2 refuses backreferences and lookaround by construction; on top of that a rule's pattern is at most
`MAX_PATTERN_CHARS` long, compiles within `MAX_PROGRAM_MEMORY`, and must not match the empty string (a rule
that matches everything would silence the Doctor for every failure).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import re2

MAX_PATTERN_CHARS = 300
MAX_PROGRAM_MEMORY = 1 << 20
WILDCARD = r"\S+"


class RuleRegexError(ValueError):
    """The pattern is not acceptable as a rule; the message says why."""


def _options() -> Any:
    options = re2.Options()
    options.log_errors = False
    options.max_mem = MAX_PROGRAM_MEMORY
    return options


def compile_rule(pattern: str) -> Callable[[str], bool]:
    """A linear-time `search(line) -> bool` for `pattern`, or RuleRegexError saying why it is refused."""
    if not pattern.strip():
        raise RuleRegexError("the pattern is empty")
    if len(pattern) > MAX_PATTERN_CHARS:
        raise RuleRegexError(f"the pattern is longer than {MAX_PATTERN_CHARS} characters")
    try:
        compiled = re2.compile(pattern, options=_options())
    except UnicodeEncodeError:
        raise RuleRegexError("the pattern is not valid Unicode") from None
    except re2.error as exc:
        raise RuleRegexError(f"not a valid RE2 pattern: {_text(exc)}") from None
    if compiled.search("") is not None:
        raise RuleRegexError("the pattern matches the empty string, so it would match every failure")

    def search(line: str) -> bool:
        try:
            return compiled.search(line) is not None
        except UnicodeEncodeError:  # a lone surrogate in captured output: RE2 reads UTF-8 only
            return compiled.search(line.encode(errors="replace").decode()) is not None

    return search


def _text(exc: Exception) -> str:
    arg = exc.args[0] if exc.args else exc
    return arg.decode(errors="replace") if isinstance(arg, bytes) else str(arg)


def template_regex(template: str) -> str:
    """A candidate pattern for a mined template: literal tokens escaped, each wildcard or mask `\\S+`,
    tokens joined by `\\s+`; leading and trailing wildcards dropped (they add nothing to a search)."""
    tokens = [WILDCARD if _is_variable(t) else re.escape(t) for t in template.split()]
    while tokens and tokens[0] == WILDCARD:
        tokens.pop(0)
    while tokens and tokens[-1] == WILDCARD:
        tokens.pop()
    pattern = r"\s+".join(tokens)
    while len(pattern) > MAX_PATTERN_CHARS and len(tokens) > 1:
        tokens.pop()
        pattern = r"\s+".join(tokens)
    return pattern[:MAX_PATTERN_CHARS]


def _is_variable(token: str) -> bool:
    return token.startswith("<") and token.endswith(">") and len(token) > 2


@dataclass(frozen=True)
class CompiledRule:
    """An accepted rule, ready to search lines."""

    id: int
    name: str
    version: int
    advice: str
    search: Callable[[str], bool]
