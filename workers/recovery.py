"""After a failed attempt: deterministic failure-hardening first, the Doctor only when nothing matched.

Hardening is the built-in six patterns, then the rules operators accepted (`shared.patterns`), read from
the run's database through the process's `RULEBOOK`: one version read per failure, a reload only when an
accepted or retired rule moved the version, so running workers apply a new rule to their next failure.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from shared.budget import BudgetExceeded
from shared.errors import LlmError
from shared.patterns.regex import CompiledRule
from shared.patterns.store import RULEBOOK
from shared.specs import PhaseSpec
from workers.attempt import Attempted
from workers.doctor import DoctorAction, DoctorAnswerError, cap_log, parse_diagnosis
from workers.hardening import Mitigation, match_failure
from workers.llm.gateway import LlmGateway
from workers.llm.prompts import doctor_prompt

log = logging.getLogger(__name__)
DOCTOR_MAX_TOKENS = 1024


@dataclass(frozen=True)
class Recovery:
    advice: str | None = None
    mitigation: dict[str, Any] | None = None
    doctor: dict[str, Any] | None = None
    action: DoctorAction = DoctorAction.RETRY_WITH_FIX
    hardening_hit: bool = False
    doctor_called: bool = False


def failure_text(attempted: Attempted) -> str:
    rec = attempted.record
    parts = [rec.failure_reason or "", attempted.failure_output, rec.builder_output or ""]
    return "\n".join(p for p in parts if p)


def analyse(
    phase: PhaseSpec,
    attempted: Attempted,
    *,
    gateway: LlmGateway | None,
    doctor_model: str | None,
    attempt: int,
    rules: Sequence[CompiledRule] | None = None,
) -> Recovery:
    """`rules` default to the accepted rules of the gateway's database (none without a gateway: with no
    LLM there is no Doctor to spare, and the built-in six still apply)."""
    rec = attempted.record
    text = failure_text(attempted)
    if rules is None:
        rules = RULEBOOK.current(gateway.db_url) if gateway is not None else ()
    hit = match_failure(text, exit_code=attempted.exit_code, scope=phase.scope, rules=rules)
    if hit is not None:
        return Recovery(advice=hit.advice, mitigation=_mitigation(hit), hardening_hit=True)
    if gateway is None or doctor_model is None:
        return Recovery()
    return _ask_doctor(phase, rec.failure_reason or "", text, gateway, doctor_model, attempt)


def _mitigation(hit: Mitigation) -> dict[str, Any]:
    mitigation: dict[str, Any] = {"pattern": str(hit.pattern), "advice": hit.advice, "evidence": hit.evidence}
    if hit.rule_id is not None:
        mitigation.update(rule_id=hit.rule_id, rule_version=hit.rule_version)
    return mitigation


def _ask_doctor(
    phase: PhaseSpec, failure: str, text: str, gateway: LlmGateway, model: str, attempt: int
) -> Recovery:
    system, messages = doctor_prompt(phase, failure[:2000], cap_log(text))
    try:
        response = gateway.call(
            role="doctor",
            attempt=attempt,
            model=model,
            system=system,
            messages=messages,
            max_tokens=DOCTOR_MAX_TOKENS,
        )
        found = parse_diagnosis(response.text)
    except BudgetExceeded as exc:
        # Refused before any spend. Raising would lose the failed attempt's record; the next builder
        # call meets the same cap and fails the phase on it if it does not fit either.
        return Recovery(doctor={"error": f"not asked, the budget refused: {exc}"[:500]})
    except DoctorAnswerError as exc:
        return Recovery(doctor={"error": exc.reason}, doctor_called=True)
    except LlmError as exc:  # the Doctor is advice: its outage must not fail the phase
        log.warning("Doctor unavailable: %s", exc)
        return Recovery(doctor={"error": str(exc)[:500]}, doctor_called=True)
    doctor = {"diagnosis": found.diagnosis, "action": str(found.action), "advice": found.advice}
    return Recovery(advice=found.advice, doctor=doctor, action=found.action, doctor_called=True)
