"""The LLM pipeline in the fleet: an API process, a real prefork worker process and Postgres, with the
real `anthropic` SDK in the worker talking HTTP to the local Messages simulator in this test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from pydantic import SecretStr

from api.client import ApiClient
from api.serve import free_port
from shared.db import transaction
from shared.keys import create_key
from shared.settings import Settings
from tests.support.procs import api_process, worker_process
from tests.support.scenario import wait_terminal
from tests.support.simulator import MessagesSimulator, Scripted, route_by_system

pytestmark = pytest.mark.fleet

PYTEST = f"PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 {sys.executable} -m pytest -q"
USAGE = {
    "input_tokens": 1500,
    "output_tokens": 120,
    "cache_creation_input_tokens": 0,
    "cache_read_input_tokens": 0,
}
GREET = "<<<FILE src/greet.py\ndef greet(name: str) -> str:\n    return 'Hello, ' + name + '!'\nFILE>>>\n"
TEST_WRONG = (
    "<<<FILE tests/test_greet.py\nfrom greet import greet\n\n\ndef test_greet() -> None:\n"
    "    assert greet('Ada') == 'Hi, Ada!'\nFILE>>>\n"
)
TEST_RIGHT = TEST_WRONG.replace("Hi, Ada!", "Hello, Ada!")
CALC = (
    "--- a/src/calc.py\n+++ b/src/calc.py\n@@ -1,2 +1,6 @@\n def add(a: int, b: int) -> int:\n"
    "     return a + b\n+\n+\n+def double(a: int) -> int:\n+    return add(a, a)\n"
)
DOCTOR = (
    '{"diagnosis": "the new test expects Hi but greet() says Hello", "action": "retry_with_fix",'
    " \"advice\": \"assert greet('Ada') == 'Hello, Ada!'\"}"
)


def test_three_phase_llm_run_where_phase_two_fails_once_is_diagnosed_and_succeeds_on_retry(
    fleet_settings: Settings, sample_repo: Path, tmp_path: Path
) -> None:
    builder = [Scripted(text=t, usage=USAGE) for t in (GREET, TEST_WRONG, TEST_RIGHT, CALC)]
    doctor = [Scripted(text=DOCTOR, usage={"input_tokens": 800, "output_tokens": 50})]
    with MessagesSimulator(route_by_system({"AUTOPACK-DOCTOR": doctor}, default=builder)) as sim:
        settings = fleet_settings.model_copy(
            update={"anthropic_api_key": SecretStr("sk-fleet-test"), "anthropic_base_url": sim.base_url}
        )
        with transaction(settings.database_url) as session:
            _, key = create_key(session, "llm-fleet")
        spec = {
            "repo": str(sample_repo),
            "config": {"builder": "anthropic", "max_attempts": 2},
            "phases": [
                {"name": "greet", "goal": "add greet()", "scope": ["src/greet.py"], "validation": [PYTEST]},
                {"name": "test-greet", "goal": "test greet()", "scope": ["tests/"], "validation": [PYTEST]},
                {"name": "double", "goal": "add double()", "scope": ["src/calc.py"], "validation": [PYTEST]},
            ],
        }
        with (
            api_process(settings, free_port(), tmp_path) as url,
            worker_process(settings, "llm", tmp_path),
        ):
            client = ApiClient(url, key)
            run = wait_terminal(client, [client.submit(spec)["id"]], timeout=120)[0]
            metrics = client._call("GET", f"/runs/{run['id']}/metrics")
    assert run["state"] == "DONE_SUCCESS", run
    assert [len(p["attempt_log"]) for p in run["phases"]] == [1, 2, 1]
    failed, fixed = run["phases"][1]["attempt_log"]
    assert (failed["outcome"], fixed["outcome"]) == ("VALIDATION_FAILED", "SUCCESS")
    log = subprocess.run(
        ["git", "-C", str(sample_repo), "log", "--format=%s", f"{run['base_sha']}..{run['result_branch']}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    assert len(log) == 3
    engine = sa.create_engine(settings.database_url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        roles = conn.execute(sa.text("SELECT role FROM llm_usage_events ORDER BY id")).scalars().all()
        doctor_json = conn.execute(
            sa.text("SELECT doctor FROM attempts WHERE outcome = 'VALIDATION_FAILED'")
        ).scalar_one()
    assert roles == ["builder", "builder", "doctor", "builder", "builder"]
    assert "Hi but greet() says Hello" in str(doctor_json)
    assert metrics["spent"]["run"]["input_tokens"]["known"] == 4 * 1500 + 800
    assert metrics["spent"]["run"]["output_tokens"]["known"] == 4 * 120 + 50
    retry_prompt = sim.bodies[3]["messages"][0]["content"]
    assert "assert greet('Ada') == 'Hello, Ada!'" in retry_prompt
