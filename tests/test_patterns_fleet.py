"""An accepted rule on a real worker: a prefork worker process, the real `anthropic` SDK against the local
Messages simulator, Postgres, the API in-process. The worker meets a new failure shape (the Doctor is
asked), an operator accepts a rule for it through the API, and the same running worker catches the next
occurrence with the rule: no Doctor request, the rule's advice in the retry prompt, the hit counted in the
phase's metrics and on the rule."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from shared.settings import Settings
from tests.support.procs import worker_process
from tests.support.simulator import MessagesSimulator, Scripted, route_by_system
from workers.llm.prompts import DOCTOR_MARKER

pytestmark = pytest.mark.fleet

PYTEST = f"PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 {sys.executable} -m pytest -q"
USAGE = {"input_tokens": 900, "output_tokens": 80}
FAILING = (
    "<<<FILE tests/test_frob.py\nclass FrobnicatorError(Exception):\n    pass\n\n\n"
    "def test_frob() -> None:\n"
    "    raise FrobnicatorError('quota exceeded for widget 17 after 3.2s')\nFILE>>>\n"
)
PASSING = "<<<FILE tests/test_frob.py\ndef test_frob() -> None:\n    assert 17 < 20\nFILE>>>\n"
DOCTOR = '{"diagnosis": "the widget quota", "action": "retry_with_fix", "advice": "stay under the quota"}'
ADVICE = "Widgets have a quota of 20: never exceed it in tests (RULE-ADVICE)."
ENDED = {"DONE_SUCCESS", "DONE_FAILED", "CANCELLED"}


def _run(client: TestClient, repo: Path, name: str) -> dict[str, Any]:
    spec = {
        "repo": str(repo),
        "name": name,
        "config": {"builder": "anthropic", "max_attempts": 2},
        "phases": [{"name": "frob", "goal": "test frob", "scope": ["tests/"], "validation": [PYTEST]}],
    }
    created = client.post("/runs", json=spec)
    assert created.status_code == 201, created.text
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        run: dict[str, Any] = client.get(f"/runs/{created.json()['id']}").json()
        if run["state"] in ENDED:
            return run
        time.sleep(0.2)
    raise AssertionError(f"run {name} did not end: {run}")


def _doctor_requests(sim: MessagesSimulator) -> int:
    return sum(1 for body in sim.bodies if DOCTOR_MARKER in str(body.get("system", "")))


def test_an_accepted_rule_catches_the_next_occurrence_on_a_running_worker_without_the_doctor(
    client: TestClient, fleet_settings: Settings, sample_repo: Path, tmp_path: Path
) -> None:
    builder = [Scripted(text=t, usage=USAGE) for t in (FAILING, PASSING, FAILING, PASSING)]
    doctor = [Scripted(text=DOCTOR, usage={"input_tokens": 700, "output_tokens": 40})]
    with MessagesSimulator(route_by_system({DOCTOR_MARKER: doctor}, default=builder)) as sim:
        settings = fleet_settings.model_copy(
            update={"anthropic_api_key": SecretStr("sk-fleet-test"), "anthropic_base_url": sim.base_url}
        )
        with worker_process(settings, "rules", tmp_path, concurrency=1):
            first = _run(client, sample_repo, "before")
            assert first["state"] == "DONE_SUCCESS", first
            assert _doctor_requests(sim) == 1  # no rule yet: the Doctor diagnosed the new shape
            patterns = client.get("/failures/patterns", params={"min_occurrences": 1}).json()
            assert any("FrobnicatorError" in c["template"] for c in patterns["clusters"]), patterns
            rule = {
                "name": "frob-quota",
                "pattern": r"FrobnicatorError:\s+quota\s+exceeded",
                "advice": ADVICE,
            }
            assert client.post("/failures/rules", json=rule).json()["version"] == 1
            asked = len(sim.bodies)
            second = _run(client, sample_repo, "after")
    assert second["state"] == "DONE_SUCCESS", second
    assert _doctor_requests(sim) == 1  # the same running worker applied the rule: no Doctor request
    later = sim.bodies[asked:]
    assert len(later) == 2 and ADVICE in str(later[1]["messages"])
    assert second["phases"][0]["attempt_log"][0]["outcome"] == "VALIDATION_FAILED"
    avoided = client.get(f"/runs/{second['id']}/metrics").json()["doctor_avoided"]
    assert (avoided["failure_hardening_hits"], avoided["doctor_skipped"]) == (1, 1)
    assert avoided["patterns"] == {"rule:frob-quota": 1}
    assert [r["hits"] for r in client.get("/failures/rules").json()["rules"]] == [1]
