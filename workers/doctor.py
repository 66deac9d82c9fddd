"""The Doctor: one LLM call that diagnoses a failure no deterministic hardening pattern explains.

`diagnose(client, model, phase, failure, log)` caps the log (`cap_log`), sends `doctor_prompt`, and
parses the answer (`parse_diagnosis`) into a `Diagnosis`: what went wrong, what to do next
(`DoctorAction`), and advice for the next attempt. An answer that is not such a JSON object raises
`DoctorAnswerError`, which carries the `LlmResponse` so its usage can still be recorded.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from shared.errors import AutopackError
from shared.specs import PhaseSpec
from workers.llm.client import LlmClient, LlmResponse
from workers.llm.prompts import doctor_prompt

DEFAULT_LOG_CHARS = 6000
_FENCE = re.compile(r"```[ \t]*(?:json)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


class DoctorAction(StrEnum):
    RETRY_WITH_FIX = "retry_with_fix"
    REPLAN = "replan"
    SKIP_PHASE = "skip_phase"
    MARK_FATAL = "mark_fatal"


@dataclass(frozen=True)
class Diagnosis:
    diagnosis: str
    action: DoctorAction
    advice: str


class DoctorAnswerError(AutopackError):
    """The Doctor's answer is not a valid diagnosis; `reason` says why. `response` is the call, if any."""

    def __init__(self, reason: str, response: LlmResponse | None = None) -> None:
        super().__init__(f"unusable Doctor answer: {reason}")
        self.reason = reason
        self.response = response


def cap_log(text: str, max_chars: int = DEFAULT_LOG_CHARS) -> str:
    """`text` if it fits `max_chars`, else its head and tail around a line saying how much was cut.

    The result is at most `max_chars` long unless `max_chars` is smaller than the marker line itself.
    """
    if max_chars <= 0:
        raise ValueError("max_chars must be positive")
    if len(text) <= max_chars:
        return text
    reserve = len(_cut_marker(len(text)))
    keep = max(0, max_chars - reserve)
    head, tail = keep // 2, keep - keep // 2
    cut = len(text) - head - tail
    return text[:head] + _cut_marker(cut) + (text[-tail:] if tail else "")


def _cut_marker(cut: int) -> str:
    return f"\n[... {cut} characters cut ...]\n"


def parse_diagnosis(text: str) -> Diagnosis:
    """The diagnosis in the Doctor's answer: a JSON object, bare, in a ```json fence, or inside prose."""
    payload = _find_object(text)
    if payload is None:
        raise DoctorAnswerError(f"no JSON object found in the answer: {_snippet(text)!r}")
    return _to_diagnosis(payload)


def diagnose(
    client: LlmClient,
    model: str,
    phase: PhaseSpec,
    failure: str,
    log: str,
    max_tokens: int = 1024,
) -> tuple[Diagnosis, LlmResponse]:
    """Ask `model` once about `failure`; raise `DoctorAnswerError` (with the response) if unparseable."""
    system, messages = doctor_prompt(phase, failure, cap_log(log))
    response = client.call(model, system, messages, max_tokens)
    try:
        return parse_diagnosis(response.text), response
    except DoctorAnswerError as exc:
        reason = exc.reason + (" (the answer was truncated)" if response.truncated else "")
        raise DoctorAnswerError(reason, response) from exc


# ------------------------------------------------------------------------------------------ parsing


def _find_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in a fenced block, else the whole text, else the first one embedded in prose."""
    for chunk in [*_FENCE.findall(text), text]:
        found = _first_object(chunk)
        if found is not None:
            return found
    return None


def _first_object(text: str) -> dict[str, Any] | None:
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return None


def _to_diagnosis(payload: dict[str, Any]) -> Diagnosis:
    fields = {name: _string_field(payload, name) for name in ("diagnosis", "action", "advice")}
    try:
        action = DoctorAction(fields["action"].strip().lower())
    except ValueError:
        allowed = ", ".join(a.value for a in DoctorAction)
        raise DoctorAnswerError(f"action {fields['action']!r} is not one of {allowed}") from None
    return Diagnosis(diagnosis=fields["diagnosis"].strip(), action=action, advice=fields["advice"].strip())


def _string_field(payload: dict[str, Any], name: str) -> str:
    if name not in payload:
        raise DoctorAnswerError(f"the JSON object has no {name!r} field")
    value = payload[name]
    if not isinstance(value, str):
        raise DoctorAnswerError(f"{name!r} must be a string, got {type(value).__name__}")
    return value


def _snippet(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit] + "..."
