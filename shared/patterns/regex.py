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
    options.never_nl = True  # a match never spans lines
    return options


def compile_rule(pattern: str) -> Callable[[str], str | None]:
    """A linear-time `find(text)`: the first line of `text` that `pattern` matches, or None.

    RE2's `never_nl` keeps every match inside one line, so a whole output is searched in one pass of
    RE2 (no per-line Python loop) with the semantics of a line-by-line search. Raises RuleRegexError,
    saying why, for a pattern that is not acceptable."""
    if not pattern.strip():
        raise RuleRegexError("the pattern is empty")
    if len(pattern) > MAX_PATTERN_CHARS:
        raise RuleRegexError(f"the pattern is longer than {MAX_PATTERN_CHARS} characters")
    try:
        compiled = re2.compile(f"(?m){pattern}", options=_options())  # ^ and $ at each line
    except UnicodeEncodeError:
        raise RuleRegexError("the pattern is not valid Unicode") from None
    except re2.error as exc:
        raise RuleRegexError(f"not a valid RE2 pattern: {_text(exc)}") from None
    if compiled.search("") is not None:
        raise RuleRegexError("the pattern matches the empty string, so it would match every failure")

    def find(text: str) -> str | None:
        try:
            match = compiled.search(text)
        except UnicodeEncodeError:  # a lone surrogate in captured output: RE2 reads UTF-8 only
            text = text.encode(errors="replace").decode()
            match = compiled.search(text)
        if match is None:
            return None
        start, end = match.span()
        return text[text.rfind("\n", 0, start) + 1 : _line_end(text, end)]

    return find


def _line_end(text: str, at: int) -> int:
    end = text.find("\n", at)
    return len(text) if end < 0 else end


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
    find: Callable[[str], str | None]
    """The first line of a text the rule matches (see `compile_rule`)."""
