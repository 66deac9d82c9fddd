"""Accepted failure rules in the database, versioned, and the per-process cache workers read them from.

Writes (`accept`, `retire`) bump the one-row rule-set version in their own transaction; the row lock that
UPDATE takes serialises concurrent writers, so every change gets its own version. `RuleBook.current` reads
that version (a primary-key read) and reloads the active rules only when it moved.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.db import transaction
from shared.errors import InvalidSpec, NotFound
from shared.models import Attempt, FailureRule, FailureRuleSet, utcnow
from shared.patterns.measure import measure
from shared.patterns.regex import CompiledRule, RuleRegexError, compile_rule
from shared.patterns.schemas import Measurement, RuleIn, RuleOut, RuleSetOut

log = logging.getLogger(__name__)
MAX_ACTIVE_RULES = 200
"""Each failure is searched by every active rule: the cap bounds that cost."""
RULE_SET_ID = 1


def version(session: Session) -> int:
    """The current rule-set version (0: no rule was ever accepted)."""
    return int(session.scalar(select(FailureRuleSet.version).where(FailureRuleSet.id == RULE_SET_ID)) or 0)


def _bump(session: Session) -> int:
    statement = (
        update(FailureRuleSet)
        .where(FailureRuleSet.id == RULE_SET_ID)
        .values(version=FailureRuleSet.version + 1, updated_at=utcnow())
        .returning(FailureRuleSet.version)
    )
    bumped = session.scalar(statement)
    if bumped is None:  # a database migrated without the seed row
        session.add(FailureRuleSet(id=RULE_SET_ID, version=1, updated_at=utcnow()))
        return 1
    return int(bumped)


def measure_draft(session: Session, pattern: str, window: int) -> Measurement:
    """`measure`, with an unacceptable pattern as a 422 naming the field."""
    try:
        return measure(session, pattern, window=window)
    except RuleRegexError as exc:
        raise InvalidSpec("pattern", str(exc)) from None


def accept(session: Session, rule: RuleIn, created_by: str | None) -> FailureRule:
    """Store `rule` (measured on history) under a new rule-set version."""
    figures = measure_draft(session, rule.pattern, rule.window)
    if session.scalar(select(FailureRule.id).where(FailureRule.name == rule.name)) is not None:
        raise InvalidSpec("name", f"a rule named {rule.name!r} exists already")
    active = session.scalar(
        select(func.count()).select_from(FailureRule).where(FailureRule.retired_at.is_(None))
    )
    if int(active or 0) >= MAX_ACTIVE_RULES:
        raise InvalidSpec("name", f"{MAX_ACTIVE_RULES} rules are active already: retire one first")
    row = FailureRule(
        name=rule.name,
        pattern=rule.pattern,
        advice=rule.advice,
        version=_bump(session),
        template=rule.template,
        measurement=figures.model_dump(),
        created_by=created_by,
    )
    session.add(row)
    try:
        session.flush()
    except IntegrityError:  # a concurrent accept took the name first
        raise InvalidSpec("name", f"a rule named {rule.name!r} exists already") from None
    return row


def retire(session: Session, rule_id: int) -> FailureRule:
    """Retire a rule (workers drop it at their next version check); retiring twice changes nothing."""
    row = session.get(FailureRule, rule_id, with_for_update=True)
    if row is None:
        raise NotFound(f"failure rule {rule_id} not found")
    if row.retired_at is None:
        row.retired_at = utcnow()
        _bump(session)
    session.flush()
    return row


def get_rule(session: Session, rule_id: int) -> RuleOut:
    row = session.get(FailureRule, rule_id)
    if row is None:
        raise NotFound(f"failure rule {rule_id} not found")
    return _out(row, hits(session, [row.id]).get(row.id, 0))


def rule_set(session: Session, *, include_retired: bool = False) -> RuleSetOut:
    query = select(FailureRule).order_by(FailureRule.id)
    if not include_retired:
        query = query.where(FailureRule.retired_at.is_(None))
    rows = list(session.scalars(query))
    counts = hits(session, [r.id for r in rows])
    return RuleSetOut(version=version(session), rules=[_out(r, counts.get(r.id, 0)) for r in rows])


def hits(session: Session, rule_ids: list[int]) -> dict[int, int]:
    """Attempts each rule explained: those whose `mitigation` names its id."""
    if not rule_ids:
        return {}
    named = Attempt.mitigation["rule_id"].as_integer()
    query = select(named, func.count()).where(named.in_(rule_ids)).group_by(named)
    return {int(rule): int(count) for rule, count in session.execute(query)}


def _out(row: FailureRule, hit_count: int) -> RuleOut:
    figures = Measurement.model_validate(row.measurement) if row.measurement else None
    return RuleOut(
        id=row.id,
        name=row.name,
        pattern=row.pattern,
        advice=row.advice,
        version=row.version,
        template=row.template,
        measurement=figures,
        created_by=row.created_by,
        created_at=row.created_at,
        retired_at=row.retired_at,
        hits=hit_count,
    )


def active_rules(session: Session) -> tuple[int, list[CompiledRule]]:
    """(version, the active rules compiled), read in one transaction so they agree."""
    current = version(session)
    rows = session.scalars(
        select(FailureRule).where(FailureRule.retired_at.is_(None)).order_by(FailureRule.id)
    )
    compiled = []
    for row in rows:
        try:
            compiled.append(CompiledRule(row.id, row.name, current, row.advice, compile_rule(row.pattern)))
        except RuleRegexError as exc:  # accepted by an older, laxer check: skipped, never fatal
            log.warning("failure rule %s (%s) skipped: %s", row.id, row.name, exc)
    return current, compiled


class RuleBook:
    """The active rules of each database this process reads, reloaded when the rule-set version moves.

    `current(db_url)` costs one primary-key read when nothing changed. A database error keeps the rules
    last read (a worker must not lose its rules, or fail a phase, because a read failed)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[str, tuple[int, list[CompiledRule]]] = {}

    def current(self, db_url: str) -> list[CompiledRule]:
        held = self._held.get(db_url)
        try:
            with transaction(db_url) as session:
                now = version(session)
                if held is None or held[0] != now:
                    held = active_rules(session)
        except Exception as exc:  # the database is down or not migrated: keep what we had
            log.warning("failure rules not refreshed: %s", exc)
            return held[1] if held else []
        with self._lock:
            self._held[db_url] = held
        return held[1]

    def clear(self) -> None:
        with self._lock:
            self._held.clear()


RULEBOOK = RuleBook()
"""The process's rule cache (a forked worker child starts from its parent's copy and refreshes itself)."""
