"""The output-budget escalation: once per phase, x1.25 from the evidence-based base, capped by the model."""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal

from shared.llm_catalog import DEFAULT_OUTPUT_LIMIT, output_limit

FACTOR = Decimal("1.25")
NEAR_FULL = 0.95


def model_limit(model: str) -> int:
    limit = output_limit(model)
    return DEFAULT_OUTPUT_LIMIT if limit is None else limit


def trigger(truncated: bool, output_tokens: int | None, max_tokens: int) -> str | None:
    """Why this answer calls for a larger budget, or None."""
    if truncated:
        return "truncated (stop_reason max_tokens)"
    if output_tokens is not None and output_tokens >= NEAR_FULL * max_tokens:
        return f"used {output_tokens} of {max_tokens} output tokens (>= 95%)"
    return None


@dataclass(frozen=True)
class Escalation:
    reason: str
    selected_budget: int
    enforced_max_tokens: int
    tokens_used: int | None
    base: int
    factor: Decimal
    new_max_tokens: int
    model_limit: int


def escalate(reason: str, *, selected: int, enforced: int, used: int | None, model: str) -> Escalation:
    base = max(selected, enforced, used or 0)
    limit = model_limit(model)
    new = min(limit, math.ceil(base * FACTOR))
    return Escalation(reason, selected, enforced, used, base, FACTOR, new, limit)
