"""Failure patterns that become deterministic rules.

The protocol, end to end:

1. **Mine** (`mine.py`): failed attempts that no rule explained (no `mitigation`, not an infra error) are
   reduced to one signature line each (`signature.py`), masked of volatile parts — paths, temp dirs, SHAs,
   hex, numbers, durations, line numbers (`masking.py`) — and grouped by the Drain log template miner
   (`drain3-improved`). Clusters are ranked by occurrences x distinct runs and carry their template,
   example attempts, the Doctor's most common action and the tokens the Doctor spent on them.
2. **Propose and measure** (`regex.py`, `measure.py`): a cluster's template becomes a candidate rule — an
   RE2 regex (linear time by construction, length-capped, never matching the empty string) plus advice.
   It is measured on history: hits among failed attempts, false hits among successful attempts' logs, and
   the Doctor tokens it would have saved.
3. **Accept** (`store.py`): an admin accepts a rule; it is stored and the one-row rule-set version is
   bumped in the same transaction (retiring bumps it too).
4. **Apply** (`store.RuleBook`, `workers/recovery.py`): before the Doctor, a worker reads the rule-set
   version (a primary-key read) and reloads the rules only when it moved, so an accepted rule applies to
   the next failure on every running worker without a restart. A hit is recorded like the built-in six:
   the attempt's `mitigation` names the rule (`pattern` "rule:<name>", `rule_id`, `rule_version`) and the
   phase's metrics count a hardening hit and a skipped Doctor; a rule's hits are the attempts naming it.
"""
