"""The LLM phase pipeline end to end: the real `anthropic` SDK over HTTP against the local simulator,
on the embedded fleet (SQLite, in-process workers), checked in the record, the telemetry and git."""

from __future__ import annotations

import math
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import SecretStr

from api.client import ApiClient
from api.serve import api_in_thread
from shared.settings import Settings
from tests.support.scenario import wait_terminal
from tests.support.simulator import MessagesSimulator, Scripted, route_by_system, system_text
from workers.embedded import embedded_fleet

GOOD = "<<<FILE src/greet.py\ndef greet(name: str) -> str:\n    return 'Hello, ' + name + '!'\nFILE>>>\n"
GOOD_DIFF = (
    "```diff\n--- a/src/calc.py\n+++ b/src/calc.py\n@@ -1,2 +1,2 @@\n-def add(a: int, b: int) -> int:\n"
    "+def add(a: int, b: int) -> int:  # sums\n     return a + b\n```\n"
)
USAGE = {
    "input_tokens": 1200,
    "output_tokens": 80,
    "cache_creation_input_tokens": 0,
    "cache_read_input_tokens": 300,
}


def answer(text: str, **kw: Any) -> Scripted:
    return Scripted(text=text, usage=kw.pop("usage", USAGE), **kw)


def doctor(action: str, advice: str) -> Scripted:
    body = f'{{"diagnosis": "the test expects a greeting", "action": "{action}", "advice": "{advice}"}}'
    return Scripted(text=body, usage={"input_tokens": 900, "output_tokens": 60})


@pytest.fixture
def llm_settings(embedded_settings: Settings) -> Settings:
    return embedded_settings.model_copy(
        update={
            "anthropic_api_key": SecretStr("sk-test"),
            "llm_backoff_base_seconds": 0.01,
            "llm_backoff_cap_seconds": 0.05,
        }
    )


class Harness:
    def __init__(self, settings: Settings, sim: MessagesSimulator, client: ApiClient, repo: Path) -> None:
        self.settings, self.sim, self.client, self.repo = settings, sim, client, repo

    def run(self, *phases: dict[str, Any], **config: Any) -> dict[str, Any]:
        body = {
            "repo": str(self.repo),
            "config": {"builder": "anthropic", "max_attempts": 2, **config},
            "phases": [
                {"name": f"p{i}", "goal": "add greet()", "scope": ["src/"], "validation": ["true"], **p}
                for i, p in enumerate(phases)
            ],
        }
        return wait_terminal(self.client, [self.client.submit(body)["id"]], timeout=60)[0]

    def rows(self, sql: str) -> Sequence[sa.Row[Any]]:
        with sa.create_engine(self.settings.database_url).connect() as conn:
            return conn.execute(sa.text(sql)).all()


@pytest.fixture
def harness(request: pytest.FixtureRequest, llm_settings: Settings, sample_repo: Path) -> Iterator[Harness]:
    script = request.param
    with MessagesSimulator(script) as sim:
        settings = llm_settings.model_copy(update={"anthropic_base_url": sim.base_url})
        with embedded_fleet(settings, 2) as celery, api_in_thread(settings, celery) as url:
            yield Harness(settings, sim, ApiClient(url, None), sample_repo)


@pytest.fixture
def pg_harness(
    request: pytest.FixtureRequest, llm_settings: Settings, pg: str, sample_repo: Path
) -> Iterator[Harness]:
    """The same harness with the record on real Postgres (the embedded broker and workers stay)."""
    with MessagesSimulator(request.param) as sim:
        settings = llm_settings.model_copy(update={"anthropic_base_url": sim.base_url, "database_url": pg})
        with embedded_fleet(settings, 2) as celery, api_in_thread(settings, celery) as url:
            yield Harness(settings, sim, ApiClient(url, None), sample_repo)


def on_postgres(script: Any) -> Any:
    return pytest.mark.parametrize("pg_harness", [script], indirect=True)


def script(*answers: Scripted) -> Any:
    return pytest.mark.parametrize("harness", [list(answers)], indirect=True)


@script(answer(GOOD))
def test_good_answer_is_applied_committed_and_its_usage_recorded_exactly(harness: Harness) -> None:
    run = harness.run({"deliverables": ["src/greet.py"]})
    assert run["state"] == "DONE_SUCCESS"
    shown = subprocess.run(
        ["git", "-C", str(harness.repo), "show", f"{run['result_branch']}:src/greet.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "Hello, " in shown
    (row,) = harness.rows(
        "SELECT role, model, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,"
        " request_id, cost_usd FROM llm_usage_events"
    )
    assert (row.role, row.input_tokens, row.output_tokens, row.cache_read_tokens, row.cache_write_tokens) == (
        "builder",
        1200,
        80,
        300,
        0,
    )
    assert row.model == "claude-haiku-4-5" and row.request_id and row.cost_usd > 0
    body = harness.sim.bodies[0]
    assert "AUTOPACK-BUILDER" in system_text(body) and body["max_tokens"] == 4096


@script(answer(GOOD_DIFF))
def test_unified_diff_answer_is_applied(harness: Harness) -> None:
    run = harness.run({})
    assert run["state"] == "DONE_SUCCESS"
    assert run["phases"][0]["attempt_log"][0]["changed_paths"] == ["src/calc.py"]


@script(answer("I think you should add a greet function."), answer(GOOD))
def test_malformed_answer_is_a_recorded_failure_whose_reason_reaches_the_next_prompt(
    harness: Harness,
) -> None:
    run = harness.run({}, doctor=False)
    first, second = run["phases"][0]["attempt_log"]
    assert (first["outcome"], second["outcome"]) == ("BUILD_FAILED", "SUCCESS")
    assert "not a change that applies" in first["failure_reason"]
    retry_prompt = str(harness.sim.bodies[1]["messages"])
    assert "not a change that applies" in retry_prompt


@script(
    answer(GOOD[:40], stop_reason="max_tokens", usage={"input_tokens": 1000, "output_tokens": 4096}),
    answer(GOOD),
)
def test_truncated_answer_fails_the_attempt_and_escalates_the_budget_once_by_a_quarter(
    harness: Harness,
) -> None:
    run = harness.run({}, doctor=False)
    assert [a["outcome"] for a in run["phases"][0]["attempt_log"]] == ["BUILD_FAILED", "SUCCESS"]
    assert "truncated" in run["phases"][0]["attempt_log"][0]["failure_reason"]
    (event,) = harness.rows(
        "SELECT base, factor, new_max_tokens, selected_budget, tokens_used FROM escalation_events"
    )
    assert event.base == max(4096, 4096, 4096) and float(event.factor) == 1.25
    assert event.new_max_tokens == math.ceil(4096 * 1.25) == harness.sim.bodies[1]["max_tokens"]


@script(Scripted.rate_limited(retry_after=0.05), Scripted.overloaded(), answer(GOOD))
def test_rate_limit_and_overload_are_retried_without_spending_an_attempt(harness: Harness) -> None:
    run = harness.run({})
    (attempt,) = run["phases"][0]["attempt_log"]
    assert attempt["outcome"] == "SUCCESS" and attempt["number"] == 1
    (infra,) = harness.rows("SELECT infra_failures FROM attempts")
    assert "rate_limited" in str(infra[0]) and "overloaded" in str(infra[0])
    assert len(harness.rows("SELECT id FROM llm_usage_events")) == 1


@script(answer("<<<FILE README.md\nhacked\nFILE>>>\n"), answer("<<<FILE README.md\nhacked\nFILE>>>\n"))
def test_scope_violating_patch_writes_no_bytes(harness: Harness) -> None:
    before = (harness.repo / "README.md").read_bytes()
    run = harness.run({}, doctor=False)
    attempts = run["phases"][0]["attempt_log"]
    assert [a["outcome"] for a in attempts] == ["SCOPE_VIOLATION", "SCOPE_VIOLATION"]
    assert "nothing written" in attempts[0]["failure_reason"]
    assert (harness.repo / "README.md").read_bytes() == before
    assert run["head_sha"] == run["base_sha"]


BROKEN = "<<<FILE src/greet.py\ndef greet(name: str) -> str:\n    return 'Bye'\nFILE>>>\n"
GREET_TEST = (
    "test ! -e src/greet.py || python -c \"import sys; sys.path.insert(0, 'src'); import greet; "
    "assert greet.greet('A') == 'Hello, A!', 'greeting is wrong'\""
)


@pytest.mark.parametrize(
    "harness",
    [
        route_by_system(
            {"AUTOPACK-DOCTOR": [doctor("retry_with_fix", "return 'Hello, ' + name + '!'")]},
            default=[answer(BROKEN), answer(GOOD)],
        )
    ],
    indirect=True,
)
def test_unexplained_failure_is_diagnosed_and_the_advice_reaches_the_retry(harness: Harness) -> None:
    run = harness.run({"validation": [GREET_TEST]})
    assert run["state"] == "DONE_SUCCESS"
    roles = [r.role for r in harness.rows("SELECT role FROM llm_usage_events ORDER BY id")]
    assert roles == ["builder", "doctor", "builder"]
    assert "return 'Hello, ' + name + '!'" in harness.sim.bodies[2]["messages"][0]["content"]


MISSING_MODULE = "<<<FILE src/greet.py\nimport yaml_but_not_installed_anywhere\nFILE>>>\n"


@script(answer(MISSING_MODULE), answer(GOOD))
def test_failure_hardening_hit_skips_the_doctor_and_records_the_avoided_estimate(harness: Harness) -> None:
    run = harness.run({"validation": ["test ! -e src/greet.py || python src/greet.py"]})
    assert run["state"] == "DONE_SUCCESS"
    assert [r.role for r in harness.rows("SELECT role FROM llm_usage_events")] == ["builder", "builder"]
    (metric,) = harness.rows(
        "SELECT failure_hardening_hit, doctor_skipped, doctor_tokens_avoided, estimate_source,"
        " estimate_sample_size FROM phase_metrics"
    )
    assert metric.failure_hardening_hit and metric.doctor_skipped
    assert metric.doctor_tokens_avoided > 0 and metric.estimate_source == "fallback"
    assert "yaml_but_not_installed_anywhere" in harness.sim.bodies[1]["messages"][0]["content"]


@script(answer(GOOD))
def test_budget_cap_refuses_the_call_before_any_spend(harness: Harness) -> None:
    run = harness.run({}, max_tokens=100)
    assert run["state"] == "DONE_FAILED"
    assert "budget cap" in run["failure_reason"]
    assert harness.sim.requests == []


@script(Scripted.auth_error())
def test_auth_error_fails_the_run_at_once_with_a_clear_reason(harness: Harness) -> None:
    run = harness.run({}, max_attempts=3)
    assert run["state"] == "DONE_FAILED"
    assert "refused the credentials" in run["failure_reason"]
    assert len(harness.sim.requests) == 1
    assert run["phases"][0]["attempt_log"] == []


@script(answer(GOOD))
def test_metrics_keep_four_categories_and_reconcile(harness: Harness) -> None:
    run = harness.run({})
    metrics = harness.client._call("GET", f"/runs/{run['id']}/metrics")
    assert {"spent", "avoided_context", "doctor_avoided", "ab_deltas"} <= set(metrics)
    spent = metrics["spent"]
    assert spent["run"]["input_tokens"] == {"known": 1200, "unknown_calls": 0}  # exactly the answer's usage
    assert spent["run"]["output_tokens"] == {"known": 80, "unknown_calls": 0}
    assert sum(c["input_tokens"] for c in spent["calls"]) == spent["phases"][0]["input_tokens"]["known"]


@script(answer("not a change"), answer(GOOD))
def test_replay_re_emits_the_source_runs_answers_attempt_by_attempt_with_zero_spend(harness: Harness) -> None:
    source = harness.run({"deliverables": ["src/greet.py"]}, doctor=False)
    assert [a["outcome"] for a in source["phases"][0]["attempt_log"]] == ["BUILD_FAILED", "SUCCESS"]
    calls_before = len(harness.sim.requests)
    replay = harness.run({"deliverables": ["src/greet.py"]}, builder="replay", replay_of=source["id"])
    assert replay["state"] == "DONE_SUCCESS"
    assert [a["outcome"] for a in replay["phases"][0]["attempt_log"]] == ["BUILD_FAILED", "SUCCESS"]
    assert len(harness.sim.requests) == calls_before  # no LLM call
    assert len(harness.rows("SELECT id FROM llm_usage_events")) == 2  # the source run's two calls only
    tree = [
        subprocess.run(
            ["git", "-C", str(harness.repo), "rev-parse", f"{r['result_branch']}^{{tree}}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        for r in (source, replay)
    ]
    assert tree[0] == tree[1]


@script(answer("no change here"), answer(GOOD))
def test_one_efficiency_row_per_phase_outcome_with_exact_spend(harness: Harness) -> None:
    run = harness.run({}, doctor=False)
    assert run["state"] == "DONE_SUCCESS"
    (row,) = harness.rows("SELECT outcome, tokens_spent, attempts FROM efficiency_metrics")
    assert (row.outcome, row.tokens_spent, row.attempts) == ("COMPLETE", 2 * (1200 + 80), 2)


@on_postgres(
    route_by_system(
        {"AUTOPACK-DOCTOR": [doctor("skip_phase", "the greeting belongs to another phase")]},
        default=[answer(BROKEN), answer(GOOD_DIFF)],
    )
)
def test_a_run_whose_phase_the_doctor_skipped_ends_done_failed_naming_that_phase(pg_harness: Harness) -> None:
    run = pg_harness.run({"validation": [GREET_TEST]}, {"validation": ["true"]})
    assert [p["state"] for p in run["phases"]] == ["SKIPPED", "COMPLETE"]  # the later phase still ran
    assert run["state"] == "DONE_FAILED"
    assert run["failure_reason"].startswith("phase 0 (p0) was skipped: skipped on the Doctor's advice")


TOO_LONG = Scripted(status=400, error_message="prompt is too long: 212000 tokens > 200000 maximum")


@on_postgres([TOO_LONG, TOO_LONG])
def test_a_request_the_provider_rejects_fails_the_attempt_with_the_providers_reason(
    pg_harness: Harness,
) -> None:
    run = pg_harness.run({}, doctor=False)
    assert run["state"] == "DONE_FAILED"  # not left EXECUTING until "worker died"
    attempts = run["phases"][0]["attempt_log"]
    assert [a["outcome"] for a in attempts] == ["BUILD_FAILED", "BUILD_FAILED"]
    assert "rejected the request (400 invalid_request_error)" in attempts[0]["failure_reason"]
    assert "prompt is too long" in run["failure_reason"] and "2 attempt(s) used" in run["failure_reason"]
    assert pg_harness.rows("SELECT tokens_spent, tokens_reserved FROM runs")[0] == (0, 0)


EXPENSIVE = {"input_tokens": 50000, "output_tokens": 10}


@on_postgres([answer(BROKEN, usage=EXPENSIVE)])
def test_a_budget_refusal_of_the_doctor_keeps_the_failed_attempts_record(pg_harness: Harness) -> None:
    # The builder's call fits; after it spent 50,010 tokens, the Doctor's worst case (its prompt
    # + 1,024 output tokens) cannot fit in the 1,000 left.
    run = pg_harness.run(
        {"validation": [GREET_TEST]}, max_attempts=1, max_output_tokens=256, max_tokens=50010 + 1000
    )
    assert run["state"] == "DONE_FAILED"
    (attempt,) = run["phases"][0]["attempt_log"]
    assert attempt["outcome"] == "VALIDATION_FAILED"
    (stored,) = pg_harness.rows("SELECT doctor FROM attempts")
    assert "the budget refused" in str(stored.doctor) and "tokens cap 51010" in str(stored.doctor)
    assert len(pg_harness.sim.requests) == 1  # the Doctor was never called


@script(answer(GOOD))
def test_avoided_context_is_zero_not_unknown_when_nothing_was_left_out(harness: Harness) -> None:
    run = harness.run({"deliverables": ["src/greet.py"]})
    assert run["state"] == "DONE_SUCCESS"
    (row,) = harness.rows("SELECT tokens_avoided_context FROM efficiency_metrics")
    assert row.tokens_avoided_context == 0
    metrics = harness.client._call("GET", f"/runs/{run['id']}/metrics")
    assert metrics["avoided_context"]["tokens"] == 0 and metrics["avoided_context"]["unknown_rows"] == 0
