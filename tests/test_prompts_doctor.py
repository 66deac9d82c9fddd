"""Builder and Doctor prompts, Doctor answer parsing, and one real Doctor call against the local simulator."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from shared.errors import AutopackError
from shared.specs import PhaseSpec
from tests.support.simulator import MessagesSimulator, Scripted, route_by_system, system_text
from workers.change import ANSWER_FORMAT
from workers.context import ContextSelection, Listed
from workers.doctor import (
    Diagnosis,
    DoctorAction,
    DoctorAnswerError,
    cap_log,
    diagnose,
    parse_diagnosis,
)
from workers.llm.client import LlmClient, RetryPolicy
from workers.llm.prompts import builder_prompt, doctor_prompt, prompt_summary

PHASE = PhaseSpec(
    name="add-greeting",
    goal="Add greet() returning 'Hello, <name>!'",
    scope=["src/greet.py", "tests/"],
    protected_paths=["src/secrets.py"],
    read_only_context=["README.md"],
    deliverables=["src/greet.py"],
    validation=["python -m pytest -q"],
)
CONTEXT = ContextSelection(
    files=[("src/greet.py", "def greet(name):\n    ```odd``` backticks\n"), ("README.md", "# Demo\n")],
    kept=2,
    omitted=1,
    estimated_tokens_kept=15,
    estimated_tokens_omitted=40,
    omitted_paths=["tests/test_big.py"],
    budget_tokens=20,
    listed=[Listed("tests/test_big.py", 160, "left out to fit the context budget")],
)
DOCTOR_MODEL = "claude-haiku-4-5"
GOOD = {"diagnosis": "pytest is not installed", "action": "retry_with_fix", "advice": "use unittest"}


def user_text(messages: list[dict[str, str]]) -> str:
    assert [m["role"] for m in messages] == ["user"]
    return messages[0]["content"]


def test_builder_prompt_first_attempt_has_goal_rules_format_and_files() -> None:
    system, messages = builder_prompt(PHASE, CONTEXT, attempt=1, previous_failure="boom", advice="do X")
    user = user_text(messages)
    assert "AUTOPACK-BUILDER" in system and "AUTOPACK-DOCTOR" not in system
    assert ANSWER_FORMAT in system
    assert "scope" in system and "protected" in system and ".git/" in system and "Delete" in system
    assert PHASE.goal in user
    for item in ["src/greet.py", "tests/", "src/secrets.py", "README.md", "python -m pytest -q"]:
        assert f"- {item}" in user
    assert "### src/greet.py (whole)\n````\ndef greet(name):\n    ```odd``` backticks\n````" in user
    assert "### README.md (whole)\n```\n# Demo\n```" in user
    assert "- tests/test_big.py (160 bytes): left out to fit the context budget" in user
    assert "boom" not in user and "do X" not in user  # first attempt: no failure, no advice


def test_builder_prompt_retry_carries_failure_and_advice() -> None:
    _, messages = builder_prompt(
        PHASE, CONTEXT, attempt=2, previous_failure="validation failed: 1 test", advice="import greet"
    )
    user = user_text(messages)
    assert "Attempt 2" in user
    assert "## The previous attempt failed\nvalidation failed: 1 test" in user
    assert "## Advice for this attempt\nimport greet" in user
    _, without = builder_prompt(PHASE, CONTEXT, attempt=3, previous_failure="x fail", advice=None)
    assert "x fail" in user_text(without) and "Advice" not in user_text(without)


def test_prompt_summary_is_one_short_line() -> None:
    line = prompt_summary(CONTEXT, attempt=2, advice="import greet")
    assert line == (
        "attempt 2: 2 files whole, 0 as outline + excerpts, 1 left out for the budget, "
        "~15 est. context tokens, with advice"
    )
    assert prompt_summary(CONTEXT, attempt=1, advice="ignored").endswith("no advice")


def test_doctor_prompt_asks_for_strict_json_about_the_failure() -> None:
    system, messages = doctor_prompt(PHASE, "validation failed", "E   ModuleNotFoundError: pytest\n")
    user = user_text(messages)
    assert "AUTOPACK-DOCTOR" in system and "AUTOPACK-BUILDER" not in system
    for word in ["diagnosis", "action", "advice", "retry_with_fix", "replan", "skip_phase", "mark_fatal"]:
        assert word in system
    assert "JSON" in system
    assert PHASE.goal in user and "validation failed" in user
    assert "```\nE   ModuleNotFoundError: pytest\n```" in user


def test_cap_log_keeps_head_and_tail_and_marks_the_cut() -> None:
    assert cap_log("short log") == "short log"
    text = "HEAD" + "x" * 10_000 + "TAIL"
    capped = cap_log(text, max_chars=200)
    assert len(capped) <= 200
    assert capped.startswith("HEAD") and capped.endswith("TAIL")
    assert "characters cut" in capped
    head, marker_and_tail = capped.split("\n[... ", 1)
    cut_text, tail = marker_and_tail.split(" characters cut ...]\n", 1)
    assert len(head) + int(cut_text) + len(tail) == len(text)  # nothing lost but the cut, nothing doubled
    assert len(cap_log(text)) <= 6000
    with pytest.raises(ValueError):
        cap_log(text, max_chars=0)


@pytest.mark.parametrize(
    "answer",
    [
        json.dumps(GOOD),
        "```json\n" + json.dumps(GOOD, indent=2) + "\n```",
        "Here is my diagnosis {for you}:\n" + json.dumps(GOOD) + "\nHope that helps.",
        "Looking at it.\n```\n" + json.dumps(GOOD) + "\n```\n",
    ],
    ids=["plain", "fenced", "prose", "bare-fence"],
)
def test_parse_diagnosis_accepts_plain_fenced_and_prose_wrapped_json(answer: str) -> None:
    assert parse_diagnosis(answer) == Diagnosis(
        "pytest is not installed", DoctorAction.RETRY_WITH_FIX, "use unittest"
    )


def test_parse_diagnosis_rejects_an_unknown_action() -> None:
    with pytest.raises(DoctorAnswerError) as caught:
        parse_diagnosis(json.dumps({**GOOD, "action": "reboot"}))
    assert "'reboot' is not one of retry_with_fix, replan, skip_phase, mark_fatal" in caught.value.reason
    assert isinstance(caught.value, AutopackError)


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("I think the tests are flaky.", "no JSON object found"),
        ("{not json at all", "no JSON object found"),
        ('["diagnosis", "action"]', "no JSON object found"),
        (json.dumps({"diagnosis": "x", "action": "replan"}), "no 'advice' field"),
        (json.dumps({**GOOD, "advice": ["a", "b"]}), "'advice' must be a string"),
    ],
)
def test_parse_diagnosis_rejects_garbage_with_a_reason(answer: str, reason: str) -> None:
    with pytest.raises(DoctorAnswerError, match=reason):
        parse_diagnosis(answer)


@pytest.fixture
def doctor_sim() -> Iterator[MessagesSimulator]:
    answers = [Scripted(text="```json\n" + json.dumps({**GOOD, "action": "replan"}) + "\n```"), Scripted("?")]
    with MessagesSimulator(route_by_system({"AUTOPACK-DOCTOR": answers})) as sim:
        yield sim


def make_client(sim: MessagesSimulator) -> LlmClient:
    return LlmClient("sk-test", sim.base_url, 5.0, RetryPolicy(max_retries=0), sleep=lambda _: None)


def test_diagnose_calls_the_doctor_once_and_parses_its_answer(doctor_sim: MessagesSimulator) -> None:
    client = make_client(doctor_sim)
    try:
        log = "start\n" + "noise\n" * 5000 + "E   ModuleNotFoundError: No module named 'pytest'\n"
        diagnosis, response = diagnose(client, DOCTOR_MODEL, PHASE, "validation failed", log)
    finally:
        client.close()
    assert diagnosis == Diagnosis("pytest is not installed", DoctorAction.REPLAN, "use unittest")
    assert response.model == DOCTOR_MODEL and response.usage.input_tokens == 120
    body = doctor_sim.bodies[0]
    assert len(doctor_sim.bodies) == 1
    assert "AUTOPACK-DOCTOR" in system_text(body)
    assert body["model"] == DOCTOR_MODEL and body["max_tokens"] == 1024
    content = body["messages"][0]["content"]
    assert "No module named 'pytest'" in content and "characters cut" in content
    assert len(content) < 8000  # the log was capped


def test_diagnose_raises_with_the_response_when_the_answer_is_unusable(doctor_sim: MessagesSimulator) -> None:
    client = make_client(doctor_sim)
    try:
        diagnose(client, DOCTOR_MODEL, PHASE, "failed", "log")
        with pytest.raises(DoctorAnswerError) as caught:
            diagnose(client, DOCTOR_MODEL, PHASE, "failed", "log", max_tokens=64)
    finally:
        client.close()
    assert caught.value.response is not None and caught.value.response.text == "?"
    assert doctor_sim.bodies[1]["max_tokens"] == 64


def test_a_long_listing_names_the_first_files_and_sums_up_the_rest_per_directory() -> None:
    listed = [Listed(f"gen/{i:04d}.py", 10, "left out to fit the context budget") for i in range(250)]
    listed += [Listed(f"other/{i}.py", 5, "left out to fit the context budget") for i in range(3)]
    context = ContextSelection([], 0, 253, 0, 1000, [x.path for x in listed], 10, listed=listed)
    user = user_text(builder_prompt(PHASE, context, attempt=1, previous_failure=None, advice=None)[1])
    assert "- gen/0199.py (10 bytes)" in user and "gen/0200.py" not in user
    assert "- gen/: 50 more files (500 bytes), left out to fit the context budget" in user
    assert "- other/: 3 more files (15 bytes)" in user
