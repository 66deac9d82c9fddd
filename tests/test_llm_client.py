"""The LLM client drives the real `anthropic` SDK over real HTTP against the local Messages simulator."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest

from tests.support.simulator import MessagesSimulator, Scripted, presented_key, route_by_system
from workers.llm.client import (
    LlmAuthError,
    LlmClient,
    LlmInfraError,
    LlmRequestError,
    LlmResponse,
    LlmUsage,
    PriceTable,
    RetryPolicy,
    cost_usd,
)

MODEL = "claude-haiku-4-5"
SYSTEM = "You are the builder."
MESSAGES: list[dict[str, Any]] = [{"role": "user", "content": "Add greet()"}]
Simulate = Callable[..., tuple[MessagesSimulator, LlmClient]]
POLICY = RetryPolicy(max_retries=2, base_seconds=0.5, cap_seconds=4.0, retry_after_cap_seconds=10.0)


class RecordingSleep:
    """Records the waits instead of sleeping, so retry tests take no time."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture
def sleep() -> RecordingSleep:
    return RecordingSleep()


def make_client(sim: MessagesSimulator, sleep: RecordingSleep, timeout: float = 5.0) -> LlmClient:
    return LlmClient("sk-test", sim.base_url, timeout, POLICY, sleep=sleep, unit_random=lambda: 1.0)


@pytest.fixture
def simulate(sleep: RecordingSleep) -> Iterator[Simulate]:
    """`simulate(*answers)` → (simulator, client) for that script; both closed after the test."""
    opened: list[tuple[MessagesSimulator, LlmClient]] = []

    def start(*answers: Scripted, timeout: float = 5.0) -> tuple[MessagesSimulator, LlmClient]:
        sim = MessagesSimulator(list(answers))
        sim.start()
        client = make_client(sim, sleep, timeout)
        opened.append((sim, client))
        return sim, client

    yield start
    for sim, client in opened:
        client.close()
        sim.stop()


def call(client: LlmClient, max_tokens: int = 256) -> LlmResponse:
    return client.call(MODEL, SYSTEM, MESSAGES, max_tokens)


# ------------------------------------------------------------------------------------------ answers


def test_good_answer_returns_text_and_exact_usage_figures(simulate: Simulate) -> None:
    usage = {
        "input_tokens": 1200,
        "output_tokens": 345,
        "cache_creation_input_tokens": 800,
        "cache_read_input_tokens": 4000,
    }
    _, client = simulate(Scripted(text="def greet(): ...", usage=usage))

    response = call(client)

    assert response.text == "def greet(): ..."
    assert response.stop_reason == "end_turn"
    assert response.truncated is False
    assert response.usage == LlmUsage(
        input_tokens=1200, output_tokens=345, cache_read_tokens=4000, cache_write_tokens=800
    )
    assert response.model == MODEL
    assert response.infra_retries == ()
    assert response.latency_ms >= 0


def test_usage_without_cache_fields_gives_none_not_zero(simulate: Simulate) -> None:
    _, client = simulate(Scripted(usage={"input_tokens": 10, "output_tokens": 3}))

    usage = call(client).usage

    assert (usage.input_tokens, usage.output_tokens) == (10, 3)
    assert usage.cache_read_tokens is None
    assert usage.cache_write_tokens is None


def test_max_tokens_stop_marks_response_truncated(simulate: Simulate) -> None:
    _, client = simulate(Scripted(text="def gre", stop_reason="max_tokens"))

    response = call(client, max_tokens=3)

    assert response.stop_reason == "max_tokens"
    assert response.truncated is True
    assert response.text == "def gre"


def test_request_id_from_response_header_is_propagated(simulate: Simulate) -> None:
    _, client = simulate(Scripted(request_id="req_011CabcdEFGH"))

    assert call(client).request_id == "req_011CabcdEFGH"


def test_simulator_receives_the_model_system_messages_and_max_tokens_given(simulate: Simulate) -> None:
    sim, client = simulate(Scripted())

    client.call("claude-sonnet-4-6", "SYSTEM PROMPT", MESSAGES, 777)

    [request] = sim.requests
    assert request.path == "/v1/messages"
    assert presented_key(request.headers) == "sk-test"
    assert request.body["model"] == "claude-sonnet-4-6"
    assert request.body["system"] == "SYSTEM PROMPT"
    assert request.body["max_tokens"] == 777
    assert request.body["messages"] == MESSAGES


# ------------------------------------------------------------------------------------ infra retries


def test_rate_limit_waits_retry_after_then_succeeds(simulate: Simulate, sleep: RecordingSleep) -> None:
    sim, client = simulate(Scripted.rate_limited(retry_after=3), Scripted(text="done"))

    response = call(client)

    assert response.text == "done"
    [failure] = response.infra_retries
    assert (failure.kind, failure.status, failure.waited_seconds) == ("rate_limited", 429, 3.0)
    assert failure.request_id == sim.requests[0].request_id
    assert sleep.waits == [3.0]
    assert len(sim.requests) == 2


def test_retry_after_longer_than_the_cap_is_capped(simulate: Simulate, sleep: RecordingSleep) -> None:
    _, client = simulate(Scripted.rate_limited(retry_after=600), Scripted())

    response = call(client)

    assert response.infra_retries[0].waited_seconds == POLICY.retry_after_cap_seconds
    assert response.infra_retries[0].retry_after == 600
    assert sleep.waits == [POLICY.retry_after_cap_seconds]


def test_overloaded_529_is_retried_with_backoff_then_succeeds(
    simulate: Simulate, sleep: RecordingSleep
) -> None:
    _, client = simulate(Scripted.overloaded(), Scripted(text="done"))

    response = call(client)

    assert response.text == "done"
    [failure] = response.infra_retries
    assert (failure.kind, failure.status) == ("overloaded", 529)
    assert failure.waited_seconds == POLICY.base_seconds  # unit_random 1.0 → the full first backoff
    assert sleep.waits == [POLICY.base_seconds]


def test_server_errors_beyond_max_retries_raise_infra_error_with_every_failure(
    simulate: Simulate, sleep: RecordingSleep
) -> None:
    tries = POLICY.max_retries + 1
    sim, client = simulate(*[Scripted.server_error() for _ in range(tries)], Scripted(text="never asked"))

    with pytest.raises(LlmInfraError) as caught:
        call(client)

    failures = caught.value.failures
    assert [(f.kind, f.status) for f in failures] == [("server_error", 500)] * tries
    assert [f.waited_seconds for f in failures] == [0.5, 1.0, 0.0]  # exponential; the last is not retried
    assert sleep.waits == [0.5, 1.0]
    assert len(sim.requests) == tries


def test_backoff_is_full_jitter_under_an_exponential_cap() -> None:
    policy = RetryPolicy(max_retries=10, base_seconds=1.0, cap_seconds=8.0)

    assert [policy.backoff(n, 1.0) for n in range(5)] == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert policy.backoff(3, 0.25) == 2.0
    assert policy.backoff(3, 0.0) == 0.0


def test_dropped_connection_is_retried_then_succeeds(simulate: Simulate) -> None:
    sim, client = simulate(Scripted.dropped(), Scripted(text="done"))

    response = call(client)

    assert response.text == "done"
    [failure] = response.infra_retries
    assert (failure.kind, failure.status) == ("connection", None)
    assert len(sim.requests) == 2


def test_reset_connection_is_retried_then_succeeds(simulate: Simulate) -> None:
    _, client = simulate(Scripted.dropped("reset"), Scripted(text="done"))

    response = call(client)

    assert response.text == "done"
    assert [f.kind for f in response.infra_retries] == ["connection"]


def test_timeout_is_retried_then_succeeds(simulate: Simulate) -> None:
    _, client = simulate(Scripted(delay=2.0), Scripted(text="done"), timeout=0.3)

    response = call(client)

    assert response.text == "done"
    assert [f.kind for f in response.infra_retries] == ["timeout"]


# ------------------------------------------------------------------------------- not retried at all


def test_auth_error_raises_immediately_without_retry(simulate: Simulate, sleep: RecordingSleep) -> None:
    sim, client = simulate(Scripted.auth_error(), Scripted(text="never asked"))

    with pytest.raises(LlmAuthError) as caught:
        call(client)

    assert caught.value.status == 401
    assert caught.value.request_id == sim.requests[0].request_id
    assert len(sim.requests) == 1
    assert sleep.waits == []


def test_other_4xx_raises_request_error_without_retry(simulate: Simulate) -> None:
    bad = Scripted(status=400, error_message="max_tokens: must be at most 64000")
    sim, client = simulate(bad, Scripted(text="never asked"))

    with pytest.raises(LlmRequestError) as caught:
        call(client)

    assert (caught.value.status, caught.value.error_type) == (400, "invalid_request_error")
    assert "max_tokens: must be at most 64000" in str(caught.value)
    assert len(sim.requests) == 1


# ---------------------------------------------------------------------------------------- simulator


def test_simulator_routes_by_system_prompt_marker(sleep: RecordingSleep) -> None:
    router = route_by_system({"DOCTOR": [Scripted(text="diagnosis")]}, default=[Scripted(text="patch")])

    with MessagesSimulator(router) as sim:
        client = make_client(sim, sleep)
        doctor = client.call(MODEL, "You are the DOCTOR.", MESSAGES, 64)
        builder = client.call(MODEL, SYSTEM, MESSAGES, 64)
        client.close()

    assert (doctor.text, builder.text) == ("diagnosis", "patch")
    assert [body["system"] for body in sim.bodies] == ["You are the DOCTOR.", SYSTEM]


def test_simulator_refuses_a_wrong_api_key_like_the_real_api(sleep: RecordingSleep) -> None:
    with MessagesSimulator([Scripted()], api_key="sk-right") as sim:
        client = make_client(sim, sleep)
        with pytest.raises(LlmAuthError):
            call(client)
        client.close()


# -------------------------------------------------------------------------------------------- cost


def test_cost_counts_input_output_and_both_cache_figures() -> None:
    usage = LlmUsage(input_tokens=1_000_000, output_tokens=100_000, cache_read_tokens=0, cache_write_tokens=0)
    assert cost_usd("claude-sonnet-4-5-20250929", usage) == Decimal("4.500000")

    cached = LlmUsage(
        input_tokens=1000, output_tokens=1000, cache_read_tokens=10_000, cache_write_tokens=2000
    )
    # haiku 4.5: 1000*1 + 1000*5 + 2000*1.25 + 10000*0.10 = 9500 µ$ per million → 0.0095
    assert cost_usd("claude-haiku-4-5", cached) == Decimal("0.009500")


def test_cost_treats_missing_cache_figures_as_zero_but_usage_keeps_none() -> None:
    usage = LlmUsage(input_tokens=1000, output_tokens=1000, cache_read_tokens=None, cache_write_tokens=None)

    assert cost_usd("claude-haiku-4-5", usage) == Decimal("0.006000")
    assert usage.cache_read_tokens is None


def test_cost_is_none_without_input_or_output_tokens_or_a_known_price() -> None:
    no_input = LlmUsage(input_tokens=None, output_tokens=10, cache_read_tokens=0, cache_write_tokens=0)
    full = LlmUsage(input_tokens=10, output_tokens=10, cache_read_tokens=0, cache_write_tokens=0)

    assert cost_usd("claude-haiku-4-5", no_input) is None
    assert cost_usd("some-other-model", full) is None


def test_price_table_matches_the_longest_model_name_prefix() -> None:
    table = PriceTable()

    opus_4_5 = table.price_for("claude-opus-4-5-20251101")
    opus_4_1 = table.price_for("claude-opus-4-1-20250805")

    assert opus_4_5 is not None and opus_4_5.input == Decimal(5)
    assert opus_4_1 is not None and opus_4_1.input == Decimal(15)
