"""Every LLM call of a phase goes through here: budget reserved first, usage recorded exactly after.

The reservation is the call's worst case (estimated input + the full output budget) and is taken in
one conditional UPDATE, so concurrent workers can overspend a cap by at most one call's estimate error.
Usage rows are written even by an execution that later loses its lease: the money was spent.

A call that failed settles at zero only when the provider surely did not bill it (it refused the request,
or every try was refused or never connected); a call that timed out, or died of anything unexpected,
settles its reserved worst case: the provider may have run it to the end. Reservations are taken under
the lease epoch, so one left by a crashed call is charged by the reconciler (`charge_orphaned`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from shared.budget import UnpricedModel, reserve, settle, worst_case
from shared.campaigns.caps import CampaignCaps, reserve_campaign
from shared.db import transaction
from shared.errors import LlmError, LlmInfraError
from shared.telemetry import record_usage, recount_phase_tokens
from workers.llm.client import LlmClient, LlmResponse, PriceTable

DEFAULT_PRICE_TABLE = PriceTable()


@dataclass
class LlmGateway:
    db_url: str
    client: LlmClient
    run_id: int
    phase_id: int
    epoch: int
    max_tokens_cap: int | None
    max_usd_cap: Decimal | None
    campaign: CampaignCaps | None = None
    """The run's campaign caps, reserved against before the run's own (`shared.campaigns.caps`)."""
    prices: PriceTable = field(default_factory=PriceTable)
    calls: int = 0

    def call(
        self,
        *,
        role: str,
        attempt: int,
        model: str,
        system: str,
        messages: list[dict[str, Any]],
        max_tokens: int,
        tools: Sequence[Mapping[str, Any]] = (),
    ) -> LlmResponse:
        """One call, reserved and recorded; raises BudgetExceeded before spending anything."""
        est_input = estimate_tokens(system, messages, tools)
        price = self.prices.price_for(model)
        if price is None and self.max_usd_cap is not None:
            raise UnpricedModel(self.run_id, model, self.max_usd_cap)  # never a $0 reservation
        tokens, usd = worst_case(
            est_input,
            max_tokens,
            price.input if price else Decimal(0),
            price.output if price else Decimal(0),
        )
        with transaction(self.db_url) as session:
            if self.campaign is not None:
                reserve_campaign(session, self.campaign, self.run_id, tokens=tokens, usd=usd)
            held = reserve(
                session,
                self.run_id,
                tokens=tokens,
                usd=usd,
                max_tokens=self.max_tokens_cap,
                max_usd=self.max_usd_cap,
                epoch=self.epoch,
            )
        self.calls += 1
        key = f"run{self.run_id}:phase{self.phase_id}:e{self.epoch}:a{attempt}:{role}:{self.calls}"
        try:
            response = self.client.call(model, system, messages, max_tokens, tools)
        except Exception as exc:
            with transaction(self.db_url) as session:
                if maybe_billed(exc):
                    settle(session, held, tokens=None, usd=None)  # None charges the reserved worst case
                else:
                    settle(session, held, tokens=0, usd=Decimal(0))
            raise
        self._record(held, key, role, attempt, model, response)
        return response

    def _record(
        self, held: Any, key: str, role: str, attempt: int, model: str, response: LlmResponse
    ) -> None:
        cost = self.prices.cost_usd(model, response.usage)
        with transaction(self.db_url) as session:
            current = settle(session, held, tokens=spent_tokens(response), usd=cost)
            record_usage(
                session,
                call_key=key,
                run_id=self.run_id,
                phase_id=self.phase_id,
                attempt_number=attempt,
                role=role,
                cost_usd=cost,
                **usage_figures(response, model),
            )
        if not current:  # fenced off: another holder may have ended the phase without this call
            with transaction(self.db_url) as session:
                recount_phase_tokens(session, self.phase_id)


def spent_tokens(response: LlmResponse) -> int | None:
    """Input + output as the provider reported them; None (charge the worst case) if it did not."""
    u = response.usage
    return None if u.input_tokens is None or u.output_tokens is None else u.input_tokens + u.output_tokens


def usage_figures(response: LlmResponse, model: str) -> dict[str, Any]:
    """The `record_usage` fields a response gives (its provider, model, tokens, latency, request id)."""
    u = response.usage
    return {
        "provider": "anthropic",
        "model": response.model or model,
        "input_tokens": u.input_tokens,
        "output_tokens": u.output_tokens,
        "cache_read_tokens": u.cache_read_tokens,
        "cache_write_tokens": u.cache_write_tokens,
        "latency_ms": response.latency_ms,
        "request_id": response.request_id,
    }


def maybe_billed(exc: Exception) -> bool:
    """Whether a failed call may still have been billed: a try timed out after sending the request (the
    provider may have finished it), or the call failed in a way this module does not classify."""
    if isinstance(exc, LlmInfraError):
        return any(f.kind == "timeout" and f.status is None for f in exc.failures)
    return not isinstance(exc, LlmError)


def estimate_tokens(
    system: str, messages: list[dict[str, Any]], tools: Sequence[Mapping[str, Any]] = ()
) -> int:
    """Bytes / 4, rounded up: only for reserving budget, never stored as spend. A tool loop's structured
    turns (content blocks) and the tool definitions count by their JSON size."""
    size = len(system.encode()) + (len(json.dumps(list(tools)).encode()) if tools else 0)
    for m in messages:
        content = m.get("content", "")
        size += len((content if isinstance(content, str) else json.dumps(content)).encode())
    return math.ceil(size / 4)
