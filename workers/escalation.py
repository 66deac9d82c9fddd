"""The output-budget escalation: once per phase, x1.25 from the evidence-based base, capped by the model."""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal

FACTOR = Decimal("1.25")
NEAR_FULL = 0.95

# Largest output (max_tokens) each model family accepts; longest prefix wins.
MODEL_OUTPUT_LIMITS = {
    "claude-haiku-4-5": 64000,
    "claude-sonnet-4": 64000,
    "claude-opus-4-5": 64000,
    "claude-opus-4": 32000,
    "claude-3-7-sonnet": 64000,
    "claude-3-5": 8192,
}
DEFAULT_OUTPUT_LIMIT = 8192


def model_limit(model: str) -> int:
    matches = [p for p in MODEL_OUTPUT_LIMITS if model.startswith(p)]
    return MODEL_OUTPUT_LIMITS[max(matches, key=len)] if matches else DEFAULT_OUTPUT_LIMIT


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
