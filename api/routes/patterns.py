"""Failure patterns and the rules made of them: mine, measure, accept, retire (`shared.patterns`).

Mining reads every owner's failure logs, and rules change every run's recovery, so all but the reads of
the rule set need an admin key.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from api.deps import AdminOnly, Authed, CallerDep, SessionDep
from api.schemas import RunId, errors
from shared.patterns.mine import mine
from shared.patterns.schemas import Measurement, PatternReport, RuleDraft, RuleIn, RuleOut, RuleSetOut
from shared.patterns.store import accept, get_rule, measure_draft, retire, rule_set

router = APIRouter(
    prefix="/failures", tags=["failure patterns"], dependencies=[Authed], responses=errors(401)
)
RuleId = RunId


@router.get("/patterns", dependencies=[AdminOnly], responses=errors(403))
def patterns(
    session: SessionDep,
    window: Annotated[int, Query(ge=1, le=20000)] = 2000,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    min_occurrences: Annotated[int, Query(ge=1, le=1000)] = 2,
) -> PatternReport:
    """Unexplained failures of the newest `window` failed attempts, clustered into templates and ranked by
    occurrences x distinct runs, each with a candidate rule."""
    return mine(session, window=window, limit=limit, min_occurrences=min_occurrences)


@router.post("/rules/measure", dependencies=[AdminOnly], responses=errors(400, 403, 413))
def measure(draft: RuleDraft, session: SessionDep) -> Measurement:
    """A candidate pattern's figures on history; an unacceptable pattern is a 422 naming `pattern`."""
    return measure_draft(session, draft.pattern, draft.window)


@router.get("/rules")
def rules(session: SessionDep, include_retired: bool = False) -> RuleSetOut:
    """The rule-set version and its rules, each with its hits."""
    return rule_set(session, include_retired=include_retired)


@router.post(
    "/rules",
    status_code=status.HTTP_201_CREATED,
    dependencies=[AdminOnly],
    responses=errors(400, 403, 413),
)
def create(rule: RuleIn, session: SessionDep, caller: CallerDep) -> RuleOut:
    """Accept a rule: measured, stored, and the rule-set version bumped; workers apply it to their next
    failure. A taken name or an unacceptable pattern is a 422 naming the field."""
    row = accept(session, rule, caller.owner)
    session.commit()
    return get_rule(session, row.id)


@router.get("/rules/{rule_id}", responses=errors(404))
def read(rule_id: RuleId, session: SessionDep) -> RuleOut:
    return get_rule(session, rule_id)


@router.post("/rules/{rule_id}/retire", dependencies=[AdminOnly], responses=errors(403, 404))
def retire_rule(rule_id: RuleId, session: SessionDep) -> RuleOut:
    """Retire a rule (a new rule-set version); retiring a retired rule changes nothing."""
    row = retire(session, rule_id)
    session.commit()
    return get_rule(session, row.id)
