"""A candidate rule measured on history: what it would have caught, where it misfires, what it saves.

The rule is searched in each line (as a worker searches) in the newest `window` failed attempts' texts
and the newest `window` successful attempts' texts. Doctor tokens saved are those the Doctor spent on the
failed attempts it matches that no rule had explained (an explained failure never reached the Doctor).
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.orm import Session

from shared.patterns.history import attempts, doctor_spend
from shared.patterns.regex import compile_rule
from shared.patterns.schemas import Measurement

EXAMPLES = 5


def matches(find: Callable[[str], str | None], text: str) -> bool:
    """Whether a line of `text` matches (one RE2 pass over the whole text)."""
    return find(text) is not None


def measure(session: Session, pattern: str, *, window: int = 2000) -> Measurement:
    """The figures of `pattern` on history (raises RuleRegexError for an unacceptable pattern)."""
    search = compile_rule(pattern)
    scanned = attempts(session, failed=True, window=window)
    failed = [a for a in scanned if matches(search, a.text)]
    fresh = [a for a in failed if not a.explained]
    successes = attempts(session, failed=False, window=window)
    false_hits = sum(1 for a in successes if matches(search, a.text))
    spend = doctor_spend(session, ((a.phase_id, a.number) for a in fresh))
    return Measurement(
        failed_scanned=len(scanned),
        failed_hits=len(failed),
        unexplained_hits=len(fresh),
        hit_runs=len({a.run_id for a in failed}),
        successful_scanned=len(successes),
        false_hits=false_hits,
        doctor_calls_saved=sum(calls for _, calls in spend.values()),
        doctor_tokens_saved=sum(tokens for tokens, _ in spend.values()),
        example_attempt_ids=[a.id for a in failed[:EXAMPLES]],
    )
