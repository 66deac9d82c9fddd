"""A thin client over the `anthropic` SDK: one Messages call, our own visible retries, exact usage, cost.

The SDK client is built with `max_retries=0`; this module retries infra failures itself (429, 529, 5xx,
connection errors and resets, timeouts) with exponential backoff and full jitter, honouring `retry-after`,
and records each failure on the response (`infra_retries`) or on the `LlmInfraError` that ends the call.
Auth errors (401/403) and other 4xx are never retried.

Usage figures are copied from the provider's answer; a figure it did not return is None, never estimated.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, cast

import anthropic
from anthropic.types import Message, MessageParam, TextBlock, ToolParam, ToolUseBlock
from pydantic import BaseModel, ConfigDict, Field

from shared.errors import InfraFailure, InfraKind, LlmAuthError, LlmError, LlmInfraError, LlmRequestError
from shared.llm_catalog import ModelPrice, default_prices
from shared.settings import Settings

TRUNCATING_STOP_REASONS = frozenset({"max_tokens", "model_context_window_exceeded"})
"""Stop reasons that mean the answer was cut off rather than finished."""

AUTH_STATUSES = frozenset({401, 403})
OVERLOADED_STATUS = 529


# ---------------------------------------------------------------------------------------- value types


@dataclass(frozen=True)
class RetryPolicy:
    """How infra failures are retried: at most `max_retries` retries after the first try.

    Wait before retry n (0-based) = uniform(0, min(cap, base * 2**n)) ("full jitter"), unless the
    provider sent `retry-after`, which is honoured up to `retry_after_cap_seconds`.
    """

    max_retries: int = 4
    base_seconds: float = 1.0
    cap_seconds: float = 30.0
    retry_after_cap_seconds: float = 60.0

    def backoff(self, retry_number: int, unit_random: float) -> float:
        return unit_random * min(self.cap_seconds, self.base_seconds * 2.0**retry_number)


@dataclass(frozen=True)
class LlmUsage:
    """Token figures exactly as the provider returned them; None where it returned nothing."""

    input_tokens: int | None
    output_tokens: int | None
    cache_read_tokens: int | None
    cache_write_tokens: int | None


@dataclass(frozen=True)
class ToolUse:
    """A tool call the model asked for: its id (echoed in the result), tool name and raw input."""

    id: str
    name: str
    input: object


@dataclass(frozen=True)
class LlmResponse:
    """One successful call. `latency_ms` is the successful try's round trip; retries' waits are excluded.

    `tool_uses` are the tool calls the answer asked for (only when tools were offered); `content` is the
    answer's content blocks as request parameters, to send back as the assistant turn of a tool loop.
    """

    text: str
    stop_reason: str | None
    truncated: bool
    usage: LlmUsage
    request_id: str | None
    latency_ms: int
    model: str
    infra_retries: tuple[InfraFailure, ...]
    tool_uses: tuple[ToolUse, ...] = ()
    content: tuple[dict[str, Any], ...] = ()


# ------------------------------------------------------------------------------------------- client


class LlmClient:
    """Messages API calls through the real `anthropic` SDK, with this module's retry policy."""

    def __init__(
        self,
        api_key: str,
        base_url: str | None,
        timeout: float,
        retry: RetryPolicy,
        *,
        sleep: Callable[[float], None] = time.sleep,
        unit_random: Callable[[], float] = random.random,
    ) -> None:
        self._sdk = anthropic.Anthropic(api_key=api_key, base_url=base_url, timeout=timeout, max_retries=0)
        self._retry = retry
        self._sleep = sleep
        self._unit_random = unit_random

    def close(self) -> None:
        self._sdk.close()

    def call(
        self,
        model: str,
        system: str,
        messages: list[dict[str, Any]],
        max_tokens: int,
        tools: Sequence[Mapping[str, Any]] = (),
    ) -> LlmResponse:
        """One answer from `model`, retrying infra failures; raises `LlmError` subclasses otherwise."""
        failures: list[InfraFailure] = []
        while True:
            started = time.monotonic()
            try:
                message = self._create(model, system, messages, max_tokens, tools)
            except anthropic.AnthropicError as exc:
                failure = classify(exc)
                if len(failures) >= self._retry.max_retries:
                    raise LlmInfraError([*failures, failure]) from exc
                failure = replace(failure, waited_seconds=self._wait_for(failure, retry_number=len(failures)))
                failures.append(failure)
                self._sleep(failure.waited_seconds)
                continue
            latency_ms = round((time.monotonic() - started) * 1000)
            return to_response(message, latency_ms, failures)

    def _create(
        self,
        model: str,
        system: str,
        messages: list[dict[str, Any]],
        max_tokens: int,
        tools: Sequence[Mapping[str, Any]],
    ) -> Message:
        return self._sdk.messages.create(
            model=model,
            system=system if system else anthropic.omit,
            messages=cast(list[MessageParam], messages),
            max_tokens=max_tokens,
            tools=cast(list[ToolParam], list(tools)) if tools else anthropic.omit,
        )

    def _wait_for(self, failure: InfraFailure, retry_number: int) -> float:
        """Seconds to sleep before retry `retry_number` (0-based): `retry-after` if sent, else backoff."""
        if failure.retry_after is not None:
            return min(failure.retry_after, self._retry.retry_after_cap_seconds)
        return self._retry.backoff(retry_number, self._unit_random())


def client_for(settings: Settings, timeout: float | None = None) -> LlmClient | None:
    """The client the settings describe (`timeout` per try, default `llm_timeout_seconds`); None when
    no API key is configured."""
    key = settings.anthropic_api_key
    if key is None or not key.get_secret_value():
        return None
    policy = RetryPolicy(
        settings.llm_max_retries,
        settings.llm_backoff_base_seconds,
        settings.llm_backoff_cap_seconds,
        settings.llm_retry_after_cap_seconds,
    )
    seconds = settings.llm_timeout_seconds if timeout is None else timeout
    return LlmClient(key.get_secret_value(), settings.anthropic_base_url, seconds, policy)


def classify(exc: anthropic.AnthropicError) -> InfraFailure:
    """The infra failure `exc` is, or raise the non-retryable `LlmError` it maps to."""
    if isinstance(exc, anthropic.APITimeoutError):
        return InfraFailure("timeout", None, 0.0, str(exc))
    if isinstance(exc, anthropic.APIConnectionError):
        return InfraFailure("connection", None, 0.0, describe_connection_error(exc))
    if isinstance(exc, anthropic.APIStatusError):
        return classify_status(exc)
    raise LlmError(f"LLM call failed: {exc}") from exc


def classify_status(exc: anthropic.APIStatusError) -> InfraFailure:
    status, message = exc.status_code, exc.api_message or exc.message
    kind = infra_kind(status)
    if kind is not None:
        retry_after = retry_after_seconds(exc.response.headers)
        return InfraFailure(kind, status, 0.0, message, request_id=exc.request_id, retry_after=retry_after)
    if status in AUTH_STATUSES:
        raise LlmAuthError(status, message, exc.request_id) from exc
    raise LlmRequestError(status, exc.type, message, exc.request_id) from exc


def infra_kind(status: int) -> InfraKind | None:
    if status == 429:
        return "rate_limited"
    if status == OVERLOADED_STATUS:
        return "overloaded"
    if status == 408:
        return "timeout"
    return "server_error" if status >= 500 else None


def describe_connection_error(exc: anthropic.APIConnectionError) -> str:
    cause = exc.__cause__
    return f"{exc.message} ({type(cause).__name__}: {cause})" if cause else exc.message


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """`retry-after-ms` or `retry-after` in seconds; None if absent or not a number (e.g. an HTTP date)."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            seconds = float(raw) * scale
        except ValueError:
            continue
        if seconds >= 0:
            return seconds
    return None


def to_response(message: Message, latency_ms: int, failures: Sequence[InfraFailure]) -> LlmResponse:
    stop_reason = message.stop_reason
    return LlmResponse(
        text="".join(block.text for block in message.content if isinstance(block, TextBlock)),
        stop_reason=stop_reason,
        truncated=stop_reason in TRUNCATING_STOP_REASONS,
        usage=usage_of(message),
        request_id=message._request_id,
        latency_ms=latency_ms,
        model=message.model,
        infra_retries=tuple(failures),
        tool_uses=tuple(
            ToolUse(block.id, block.name, block.input)
            for block in message.content
            if isinstance(block, ToolUseBlock)
        ),
        content=tuple(block.model_dump(mode="json", exclude_none=True) for block in message.content),
    )


def usage_of(message: Message) -> LlmUsage:
    usage = getattr(message, "usage", None)
    return LlmUsage(
        input_tokens=token_count(usage, "input_tokens"),
        output_tokens=token_count(usage, "output_tokens"),
        cache_read_tokens=token_count(usage, "cache_read_input_tokens"),
        cache_write_tokens=token_count(usage, "cache_creation_input_tokens"),
    )


def token_count(usage: object, name: str) -> int | None:
    """The figure if the provider sent an integer; None if it sent nothing, null or something else."""
    value = getattr(usage, name, None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# --------------------------------------------------------------------------------------------- prices

PER_MILLION = Decimal(1_000_000)
COST_QUANTUM = Decimal("0.000001")  # llm_usage_events.cost_usd is Numeric(14, 6)


class PriceTable(BaseModel):
    """Per-model prices, matched by the longest model-name prefix."""

    model_config = ConfigDict(frozen=True)

    prices: dict[str, ModelPrice] = Field(default_factory=default_prices)

    def price_for(self, model: str) -> ModelPrice | None:
        matches = [prefix for prefix in self.prices if model.startswith(prefix)]
        return self.prices[max(matches, key=len)] if matches else None

    def cost_usd(self, model: str, usage: LlmUsage) -> Decimal | None:
        """USD for one call, to 6 places. See the module function `cost_usd` for the None rules."""
        price = self.price_for(model)
        if price is None or usage.input_tokens is None or usage.output_tokens is None:
            return None
        total = (
            usage.input_tokens * price.input
            + usage.output_tokens * price.output
            + (usage.cache_write_tokens or 0) * price.cache_write
            + (usage.cache_read_tokens or 0) * price.cache_read
        )
        return (total / PER_MILLION).quantize(COST_QUANTUM, rounding=ROUND_HALF_UP)


DEFAULT_PRICE_TABLE = PriceTable()


def cost_usd(model: str, usage: LlmUsage, table: PriceTable = DEFAULT_PRICE_TABLE) -> Decimal | None:
    """The call's cost in USD, or None when it cannot be known.

    None if the model has no price, or if input or output tokens are missing (no meaningful cost without
    them). Missing cache figures count as 0 here, *for the cost only*: a provider that omits them did not
    bill cache tokens. The usage row still stores those figures as NULL.
    """
    return table.cost_usd(model, usage)
