"""Approvals without workers: path-rule classification, and the HTTP API's 404/409/422 and ownership
on real Postgres (tests/test_approvals_fleet.py runs paused phases on real worker processes)."""

from __future__ import annotations

import pytest

from shared.approvals.rules import PathRule, RiskTier, RulePolicy, classify, matches, parse_rule
from shared.settings import Settings


def rule(pattern: str, tier: str, policy: str) -> PathRule:
    return PathRule(pattern=pattern, tier=RiskTier(tier), policy=RulePolicy(policy))


@pytest.mark.parametrize(
    ("pattern", "path", "hit"),
    [
        ("infra/**", "infra/a/b.tf", True),
        ("infra/**", "infrastructure/a", False),
        ("infra/", "infra/main.tf", True),
        ("infra", "infra/main.tf", True),
        ("infra", "infra2/main.tf", False),
        ("*.lock", "poetry.lock", True),
        ("*.lock", "sub/poetry.lock", False),
        ("**/*.lock", "sub/poetry.lock", True),
        ("src/?.py", "src/a.py", True),
        ("src/?.py", "src/ab.py", False),
        ("a.b", "aXb", False),
    ],
)
def test_globs_keep_single_stars_within_one_part_and_plain_paths_cover_their_subtree(
    pattern: str, path: str, hit: bool
) -> None:
    assert matches(pattern, path) is hit


def test_the_strictest_policy_of_the_ruled_paths_decides_and_the_first_matching_rule_wins() -> None:
    rules = [
        rule("docs/**", "low", "auto"),
        rule("infra/**", "high", "ask"),
        rule("secrets/**", "critical", "deny"),
        rule("**", "medium", "deny"),
    ]
    assert classify(["src/x.py"], rules[:3]) is None
    auto = classify(["docs/a.md"], rules)
    assert auto is not None and auto.policy == RulePolicy.AUTO
    ask = classify(["docs/a.md", "infra/main.tf"], rules)
    assert ask is not None and ask.policy == RulePolicy.ASK
    assert [(m.path, m.tier, m.policy) for m in ask.matches] == [
        ("docs/a.md", RiskTier.LOW, RulePolicy.AUTO),
        ("infra/main.tf", RiskTier.HIGH, RulePolicy.ASK),
    ]
    deny = classify(["infra/main.tf", "secrets/k", "src/x.py"], rules)
    assert deny is not None and deny.policy == RulePolicy.DENY
    assert "secrets/k (critical, deny by secrets/**)" in deny.reason()


def test_auto_passes_only_low_risk_a_higher_tier_asks() -> None:
    verdict = classify(["db/schema.sql"], [rule("db/**", "high", "auto")])
    assert verdict is not None and verdict.policy == RulePolicy.ASK


def test_settings_spell_rules_as_pattern_tier_policy_and_refuse_a_malformed_one() -> None:
    s = Settings(approval_rules="infra/**=high:ask, a=b/*.x=low:auto", _env_file=None)  # type: ignore[call-arg]
    assert [(r.pattern, r.tier, r.policy) for r in s.path_rules] == [
        ("infra/**", RiskTier.HIGH, RulePolicy.ASK),
        ("a=b/*.x", RiskTier.LOW, RulePolicy.AUTO),
    ]
    for bad in ("infra/**", "infra/**=high", "infra/**=extreme:ask", "x=low:maybe"):
        with pytest.raises(ValueError):
            parse_rule(bad)
        with pytest.raises(ValueError):
            Settings(approval_rules=bad, _env_file=None)  # type: ignore[call-arg]
