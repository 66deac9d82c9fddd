"""Reads of attempt history for mining and measuring, bounded by a window of the newest attempts."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.models import Attempt, LlmUsageEvent
from shared.states import AttemptOutcome

TEXT_CHARS = 65536
"""Characters of each stored text read (validation output is capped at about this when recorded)."""
DOCTOR_ROLE = "doctor"
_CHUNK = 500


@dataclass(frozen=True)
class LoggedAttempt:
    id: int
    run_id: int
    phase_id: int
    number: int
    failure_reason: str | None
    validation_output: str | None
    builder_output: str | None
    mitigation: dict[str, Any] | None
    doctor: dict[str, Any] | None

    @property
    def explained(self) -> bool:
        return bool(self.mitigation)

    @property
    def text(self) -> str:
        """What a worker's hardening reads: reason, output, the builder's answer."""
        parts = (self.failure_reason, self.validation_output, self.builder_output)
        return "\n".join(p for p in parts if p)


def attempts(session: Session, *, failed: bool, window: int) -> list[LoggedAttempt]:
    """The newest `window` failed (not infra) or successful attempts."""
    query = select(
        Attempt.id,
        Attempt.run_id,
        Attempt.phase_id,
        Attempt.number,
        func.substr(Attempt.failure_reason, 1, TEXT_CHARS),
        func.substr(Attempt.validation_output, 1, TEXT_CHARS),
        func.substr(Attempt.builder_output, 1, TEXT_CHARS),
        Attempt.mitigation,
        Attempt.doctor,
    )
    if failed:
        query = query.where(Attempt.outcome.not_in([AttemptOutcome.SUCCESS, AttemptOutcome.INFRA_ERROR]))
    else:
        query = query.where(Attempt.outcome == AttemptOutcome.SUCCESS)
    rows = session.execute(query.order_by(Attempt.id.desc()).limit(window))
    return [LoggedAttempt(*row) for row in rows]


def doctor_spend(session: Session, keys: Iterable[tuple[int, int]]) -> dict[tuple[int, int], tuple[int, int]]:
    """(input + output tokens, calls) of the Doctor on each (phase id, attempt number) that had any."""
    wanted = set(keys)
    out: dict[tuple[int, int], tuple[int, int]] = {}
    for chunk in _chunks(sorted({phase for phase, _ in wanted})):
        query = select(
            LlmUsageEvent.phase_id,
            LlmUsageEvent.attempt_number,
            LlmUsageEvent.input_tokens,
            LlmUsageEvent.output_tokens,
        ).where(LlmUsageEvent.role == DOCTOR_ROLE, LlmUsageEvent.phase_id.in_(chunk))
        for phase_id, number, tokens_in, tokens_out in session.execute(query):
            key = (int(phase_id or 0), int(number or 0))
            if key in wanted:
                tokens, calls = out.get(key, (0, 0))
                out[key] = (tokens + (tokens_in or 0) + (tokens_out or 0), calls + 1)
    return out


def _chunks(ids: list[int]) -> Iterator[list[int]]:
    for start in range(0, len(ids), _CHUNK):
        yield ids[start : start + _CHUNK]
