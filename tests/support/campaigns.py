"""Campaign fixtures for fleet tests: LLM tasks whose answer the simulated model decides, and waits.

Task `i` has two phases: `base` (any model answers it right) and `solve`, whose answer is right or
wrong as `decide(i, model)` says, so the test knows every run's outcome — and hence the discordant
counts of an A/B — before anything runs. Validation checks the file the answer wrote."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from api.client import ApiClient
from tests.support.simulator import JsonObject, Scripted

USAGE = {
    "input_tokens": 900,
    "output_tokens": 60,
    "cache_creation_input_tokens": 0,
    "cache_read_input_tokens": 0,
}
TASK = re.compile(r"TASK (\d+) (base|solve)")
HAIKU, SONNET = "claude-haiku-4-5", "claude-sonnet-4-6"
CHECK = "test ! -e src/answer.txt || grep -qx right src/answer.txt"
"""Passes at the baseline (no answer yet), so only a wrong answer is a new failure."""
LENIENT = "test ! -e src/answer.txt || test -s src/answer.txt"
Decide = Callable[[int, str], "bool | None"]
"""(task, model) -> right answer (True), wrong answer (False), or None: the provider is overloaded (529)."""


def task_spec(repo: Path, i: int, model: str = HAIKU, *, phases: int = 2) -> dict[str, Any]:
    solve = {
        "name": "solve",
        "goal": f"TASK {i} solve: write the answer",
        "scope": ["src/answer.txt"],
        "deliverables": ["src/answer.txt"],
        "validation": [CHECK],
    }
    base = {
        "name": "base",
        "goal": f"TASK {i} base: lay the ground",
        "scope": ["src/base.txt"],
        "deliverables": ["src/base.txt"],
        "validation": ["test ! -e src/base.txt || test -s src/base.txt"],
    }
    return {
        "repo": str(repo),
        "name": f"task-{i}",
        "config": {
            "builder": "anthropic",
            "max_attempts": 1,
            "doctor": False,
            "models": {"builder": [model]},
        },
        "phases": [base, solve] if phases == 2 else [solve],
    }


def router(decide: Decide) -> Callable[[JsonObject], Scripted]:
    def route(body: JsonObject) -> Scripted:
        found = TASK.search(str(body.get("messages")))
        if found is None:
            return Scripted(status=400, error_message="not a campaign task")
        i, phase = int(found.group(1)), found.group(2)
        if phase == "base":
            return Scripted(text="<<<FILE src/base.txt\nground\nFILE>>>\n", usage=USAGE)
        right = decide(i, str(body["model"]))
        if right is None:
            return Scripted.overloaded()
        return Scripted(
            text=f"<<<FILE src/answer.txt\n{'right' if right else 'wrong'}\nFILE>>>\n", usage=USAGE
        )

    return route


def wait_campaign(client: ApiClient, campaign_id: int, timeout: float) -> dict[str, Any]:
    """The campaign once it has ended and every child with it."""
    deadline = time.monotonic() + timeout
    while True:
        view = client.campaign(campaign_id)
        if view["state"] in ("DONE", "CANCELLED") and view["ended"] == view["children"]:
            return view
        if time.monotonic() > deadline:
            raise AssertionError(f"campaign {campaign_id} not over after {timeout}s: {view}")
        time.sleep(0.3)
