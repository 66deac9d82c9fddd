"""Path rules: which changed paths need a person's approval, and how risky they are.

A rule is a repository-relative glob with a risk tier and a policy. `*` and `?` stay within one
`/`-separated part, `**` crosses them; a pattern without wildcards (or ending in `/`) covers that path
and everything under it, as `scope` does. The first rule that matches a path decides it: a run's own
rules come before the fleet's (`AUTOPACK_APPROVAL_RULES`).

Only `low` risk passes unseen: `auto` on a higher tier means `ask`, so a mistyped tier can never
wave a risky change through.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

from pydantic import BaseModel, ConfigDict, Field


class RiskTier(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


class RulePolicy(StrEnum):
    AUTO = "auto"
    """Approved and recorded without asking (low risk only; higher tiers ask)."""
    ASK = "ask"
    """The phase pauses until a person approves or rejects the change."""
    DENY = "deny"
    """The attempt fails, nothing is committed, as for a protected path."""


class PathRule(BaseModel):
    """One path rule, in a run's `config.approval_rules` or the fleet's settings."""

    model_config = ConfigDict(extra="forbid")

    pattern: str = Field(min_length=1, max_length=500)
    """Repository-relative glob, e.g. `infra/**`, `*.lock`, `deploy/` (everything under deploy)."""
    tier: RiskTier
    """How risky a change to a matching path is."""
    policy: RulePolicy
    """What a change to a matching path does: `auto`, `ask` or `deny`."""


@dataclass(frozen=True)
class PathMatch:
    """A changed path and the rule that decided it (`policy` is the effective one)."""

    path: str
    pattern: str
    tier: RiskTier
    policy: RulePolicy


@dataclass(frozen=True)
class Verdict:
    """What a change's ruled paths decide together: the strictest policy among them."""

    policy: RulePolicy
    matches: tuple[PathMatch, ...]

    def reason(self) -> str:
        return "; ".join(f"{m.path} ({m.tier}, {m.policy} by {m.pattern})" for m in self.matches)


def parse_rule(text: str) -> PathRule:
    """`pattern=tier:policy`, e.g. `infra/**=high:ask`, as `AUTOPACK_APPROVAL_RULES` spells a rule."""
    pattern, sep, rest = text.strip().rpartition("=")
    tier, colon, policy = rest.partition(":")
    if not sep or not colon or not pattern:
        raise ValueError(f"approval rule {text!r}: expected pattern=tier:policy, e.g. infra/**=high:ask")
    return PathRule(pattern=pattern.strip(), tier=RiskTier(tier.strip()), policy=RulePolicy(policy.strip()))


@lru_cache(maxsize=512)
def _regex(pattern: str) -> re.Pattern[str]:
    body = pattern.rstrip("/")
    wild = any(c in body for c in "*?") and not pattern.endswith("/")
    out = []
    for part in re.split(r"(\*\*|\*|\?)", body):
        out.append({"**": ".*", "*": "[^/]*", "?": "[^/]"}.get(part, re.escape(part)))
    suffix = "" if wild else "(/.*)?"  # a plain path covers what is under it, like `scope`
    return re.compile("".join(out) + suffix)


def matches(pattern: str, path: str) -> bool:
    return _regex(pattern).fullmatch(path) is not None


def effective(rule: PathRule) -> RulePolicy:
    if rule.policy == RulePolicy.AUTO and rule.tier != RiskTier.LOW:
        return RulePolicy.ASK
    return rule.policy


_STRICTNESS = {RulePolicy.AUTO: 0, RulePolicy.ASK: 1, RulePolicy.DENY: 2}


def classify(paths: Iterable[str], rules: Sequence[PathRule]) -> Verdict | None:
    """The verdict on a change's paths; None when no rule matches any of them (the change goes on
    as before, unrecorded)."""
    found: list[PathMatch] = []
    for path in paths:
        rule = next((r for r in rules if matches(r.pattern, path)), None)
        if rule is not None:
            found.append(PathMatch(path, rule.pattern, rule.tier, effective(rule)))
    if not found:
        return None
    policy = max((m.policy for m in found), key=_STRICTNESS.__getitem__)
    return Verdict(policy, tuple(found))
