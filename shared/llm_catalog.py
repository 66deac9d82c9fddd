"""What the fleet knows about each model: the largest output it accepts and its price, by name prefix.

Both the API (to refuse a spec at submit) and the workers (to escalate, reserve and bill) read this one
table, so a run that passes submit never meets a model the workers cannot budget. A model is *known*
when its family's output limit is listed; its price may still be unknown (a new version of a known
family), and such a model cannot run under a `max_usd` cap: a cap cannot be enforced on an unknown price.
"""

from __future__ import annotations

from decimal import Decimal

from pydantic import BaseModel, ConfigDict


class ModelPrice(BaseModel):
    """USD per million tokens. `cache_write` is the 5-minute-TTL write price (1.25 x input)."""

    model_config = ConfigDict(frozen=True)

    input: Decimal
    output: Decimal
    cache_write: Decimal
    cache_read: Decimal


def _price(input_usd: str, output_usd: str, cache_write_usd: str, cache_read_usd: str) -> ModelPrice:
    return ModelPrice(
        input=Decimal(input_usd),
        output=Decimal(output_usd),
        cache_write=Decimal(cache_write_usd),
        cache_read=Decimal(cache_read_usd),
    )


def default_prices() -> dict[str, ModelPrice]:
    """Anthropic list prices by model-name prefix (standard tier, prompts up to 200k tokens).

    Only models whose price is known are listed; any other model costs None until it is added.
    """
    opus_4_5, opus_4 = _price("5", "25", "6.25", "0.50"), _price("15", "75", "18.75", "1.50")
    sonnet, haiku_4_5 = _price("3", "15", "3.75", "0.30"), _price("1", "5", "1.25", "0.10")
    return {
        # 4.6 prices assumed equal to their 4.5 predecessors: check the pricing page before relying on them.
        "claude-opus-4-6": opus_4_5,
        "claude-sonnet-4-6": sonnet,
        "claude-opus-4-5": opus_4_5,
        "claude-opus-4-1": opus_4,
        "claude-opus-4-0": opus_4,
        "claude-opus-4-20250514": opus_4,
        "claude-3-opus": opus_4,
        "claude-sonnet-4-5": sonnet,
        "claude-sonnet-4-0": sonnet,
        "claude-sonnet-4-20250514": sonnet,
        "claude-3-7-sonnet": sonnet,
        "claude-3-5-sonnet": sonnet,
        "claude-haiku-4-5": haiku_4_5,
        "claude-3-5-haiku": _price("0.80", "4", "1", "0.08"),
        "claude-3-haiku": _price("0.25", "1.25", "0.30", "0.03"),
    }


MODEL_OUTPUT_LIMITS = {
    "claude-haiku-4-5": 64000,
    "claude-sonnet-4": 64000,
    "claude-opus-4-5": 64000,
    "claude-opus-4": 32000,
    "claude-3-7-sonnet": 64000,
    "claude-3-5": 8192,
    "claude-3-opus": 4096,
    "claude-3-haiku": 4096,
}
"""Largest `max_tokens` each model family accepts; the longest prefix wins. Not listed = unknown model."""

DEFAULT_OUTPUT_LIMIT = 8192
"""For a model recorded before the catalog was checked at submit (older runs only)."""


def _longest_prefix(model: str, table: dict[str, object]) -> str | None:
    matches = [prefix for prefix in table if model.startswith(prefix)]
    return max(matches, key=len) if matches else None


def output_limit(model: str) -> int | None:
    """The model's largest accepted `max_tokens`, or None for a model the fleet does not know."""
    prefix = _longest_prefix(model, dict(MODEL_OUTPUT_LIMITS))
    return None if prefix is None else MODEL_OUTPUT_LIMITS[prefix]


def has_price(model: str, prices: dict[str, ModelPrice] | None = None) -> bool:
    return _longest_prefix(model, dict(prices or DEFAULT_PRICES)) is not None


DEFAULT_PRICES = default_prices()
