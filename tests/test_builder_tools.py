"""The builder's read-only tools: confinement and bounds (unit), and the tool-use loop end to end on the
simulator (usage rows per turn, caps mid-loop, refusals reach the model, replay re-emits the final answer)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from shared.specs import PhaseSpec
from tests import test_llm_pipeline as pipeline
from tests.support.simulator import JsonObject, Scripted, tool_results
from tests.test_llm_pipeline import GOOD_DIFF, Harness, answer, script
from workers.builders.tools import ToolBox, ToolError, ToolLimits

llm_settings, harness = pipeline.llm_settings, pipeline.harness  # the pipeline tests' fixtures, by name

PHASE = PhaseSpec(name="p", goal="g", scope=["src/"], read_only_context=["docs/guide.md"])


@pytest.fixture
def box(tmp_path: Path) -> ToolBox:
    (tmp_path / "src").mkdir()
    (tmp_path / "docs").mkdir()
    (tmp_path / "private").mkdir()
    (tmp_path / ".git").mkdir()
    (tmp_path / "src/calc.py").write_text("".join(f"line {i}\n" for i in range(1, 501)))
    (tmp_path / "src/blob.bin").write_bytes(b"\x00\x01line 7")
    (tmp_path / "docs/guide.md").write_text("# Guide\nuse add()\n")
    (tmp_path / "docs/other.md").write_text("not readable\n")
    (tmp_path / "private/key.txt").write_text("secret\n")
    (tmp_path / ".git/config").write_text("[core]\n")
    os.symlink(tmp_path / "private/key.txt", tmp_path / "src/link.txt")
    return ToolBox(tmp_path, PHASE, ToolLimits(max_calls=20, max_bytes=20_000, max_seconds=5))


def test_read_range_numbers_lines_and_bounds_them(box: ToolBox) -> None:
    text = box.run("read_range", {"path": "src/calc.py", "start_line": 10, "end_line": 12})
    assert text == "src/calc.py lines 10-12 of 500:\n10: line 10\n11: line 11\n12: line 12\n"
    long = box.run("read_range", {"path": "src/calc.py", "start_line": 1, "end_line": 500})
    assert "lines 1-400 of 500" in long  # one read returns at most 400 lines
    assert box.run("read_range", {"path": "docs/guide.md"}).endswith("2: use add()\n")  # read-only context


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("../outside.txt", "refused (a relative path"),
        ("/etc/passwd", "refused (a relative path"),
        (".git/config", "refused (a relative path"),
        ("src/../private/key.txt", "refused (a relative path"),
        ("private/key.txt", "not in the phase's scope"),
        ("docs/other.md", "not in the phase's scope"),
        ("src/link.txt", "not in the phase's scope"),  # a symlink resolves to its real location
        ("src/blob.bin", "binary file"),
    ],
)
def test_reads_outside_scope_and_read_only_context_are_refused(box: ToolBox, path: str, why: str) -> None:
    with pytest.raises(ToolError, match=None) as refused:
        box.run("read_range", {"path": path})
    assert why in str(refused.value)


def test_grep_searches_only_the_phases_files_and_refuses_risky_patterns(box: ToolBox) -> None:
    assert box.run("grep", {"pattern": r"^line 49\d$"}).splitlines()[0] == "src/calc.py:490: line 490"
    assert box.run("grep", {"pattern": "secret"}) == "no match"  # private/ and the symlink's target
    assert box.run("grep", {"pattern": "add"}) == "docs/guide.md:2: use add()"
    assert "stopped" in box.run("grep", {"pattern": "line"})  # at most 50 matches
    for pattern in ["(a+)+$", "x" * 201]:
        with pytest.raises(ToolError, match="pattern refused"):
            box.run("grep", {"pattern": pattern})
    with pytest.raises(ToolError, match="invalid regular expression"):
        box.run("grep", {"pattern": "("})


def test_list_dir_shows_the_phases_entries_and_never_git(box: ToolBox) -> None:
    assert box.run("list_dir", {}) == "docs/guide.md\nsrc"
    assert box.run("list_dir", {"path": "src"}) == "blob.bin\ncalc.py\nlink.txt"
    with pytest.raises(ToolError, match="refused"):
        box.run("list_dir", {"path": ".git"})


def test_malformed_calls_are_errors_and_count_against_the_allowance(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src/a.py").write_text("a = 1\n" * 2000)
    tiny = ToolBox(tmp_path, PHASE, ToolLimits(max_calls=4, max_bytes=1024, max_seconds=5))
    for name, arguments, message in [
        ("rm", {"path": "src/a.py"}, "unknown tool"),
        ("read_range", ["src/a.py"], "must be a JSON object"),
        ("read_range", {"path": "src/a.py", "start_line": "1"}, "must be an integer"),
    ]:
        with pytest.raises(ToolError, match=message):
            tiny.run(name, arguments)
    cut = tiny.run("read_range", {"path": "src/a.py"})
    assert cut.endswith("tool result bytes are used up]") and tiny.bytes_returned == 1024
    with pytest.raises(ToolError, match="tool call limit reached"):
        tiny.run("list_dir", {})


def test_time_allowance_is_enforced(box: ToolBox) -> None:
    box.seconds = box.limits.max_seconds
    with pytest.raises(ToolError, match="tool time limit"):
        box.run("list_dir", {})


# ----------------------------------------------------------------------------- the loop, end to end

READS = Scripted.tools(
    ("read_range", {"path": "src/calc.py", "start_line": 1, "end_line": 2}),
    ("grep", {"pattern": "def add"}),
    usage={"input_tokens": 1500, "output_tokens": 40},
)
REFUSED = Scripted.tools(
    ("read_range", {"path": "../../etc/passwd"}),
    ("list_dir", {"path": ".git"}),
    ("read_range", {"path": "README.md"}),
    usage={"input_tokens": 1700, "output_tokens": 50},
)


def results(body: JsonObject) -> list[tuple[bool, str]]:
    return [(bool(r.get("is_error")), str(r["content"])) for r in tool_results(body)]


def tree(harness: Harness, run: dict[str, Any]) -> str:
    ref = f"{run['result_branch']}^{{tree}}"
    return subprocess.run(
        ["git", "-C", str(harness.repo), "rev-parse", ref], check=True, capture_output=True, text=True
    ).stdout


@script(READS, REFUSED, answer(GOOD_DIFF))
def test_tool_loop_reads_and_greps_then_answers_each_turn_a_usage_row_and_replay_is_free(
    harness: Harness,
) -> None:
    run = harness.run({}, builder_tools=True, doctor=False)
    assert run["state"] == "DONE_SUCCESS"
    first, second, third = harness.sim.bodies
    assert [t["name"] for t in first["tools"]] == ["read_range", "grep", "list_dir"]
    assert tool_results(first) == []
    assert results(second) == [
        (False, "src/calc.py lines 1-2 of 2:\n1: def add(a: int, b: int) -> int:\n2:     return a + b\n"),
        (False, "src/calc.py:1: def add(a: int, b: int) -> int:"),
    ]
    refusals = results(third)
    assert [error for error, _ in refusals] == [True, True, True]
    assert "refused" in refusals[0][1] and "refused" in refusals[1][1]
    assert "not in the phase's scope" in refusals[2][1]  # README.md is neither scope nor read-only
    assert third["messages"][1]["role"] == "assistant"  # the model's own tool_use turn is sent back
    rows = harness.rows("SELECT role, input_tokens, output_tokens FROM llm_usage_events ORDER BY id")
    assert [(r.role, r.input_tokens, r.output_tokens) for r in rows] == [
        ("builder", 1500, 40),
        ("builder", 1700, 50),
        ("builder", 1200, 80),
    ]
    (attempt,) = run["phases"][0]["attempt_log"]
    (context,) = harness.rows("SELECT context FROM attempts")
    recorded = json.loads(context.context) if isinstance(context.context, str) else context.context
    assert recorded["model_turns"] == 3 and len(recorded["tool_calls"]) == 5
    replay = harness.run({}, builder="replay", replay_of=run["id"])
    assert replay["state"] == "DONE_SUCCESS"
    assert len(harness.sim.requests) == 3  # replay called no model
    assert len(harness.rows("SELECT id FROM llm_usage_events")) == 3
    assert tree(harness, replay) == tree(harness, run)
    assert attempt["outcome"] == "SUCCESS"


@script(READS, answer(GOOD_DIFF))
def test_a_cap_reached_mid_loop_stops_it_before_the_next_call_spends(harness: Harness) -> None:
    run = harness.run({}, builder_tools=True, doctor=False, max_tokens=6000)
    assert run["state"] == "DONE_FAILED"
    assert "budget cap" in run["failure_reason"]
    assert len(harness.sim.requests) == 1  # the second turn's reservation did not fit
    (row,) = harness.rows("SELECT input_tokens, output_tokens FROM llm_usage_events")
    assert (row.input_tokens, row.output_tokens) == (1500, 40)


LOOPING = Scripted.tools(("list_dir", {}), ("list_dir", {}))


@script(LOOPING, LOOPING, LOOPING, answer(GOOD_DIFF))
def test_a_model_that_never_stops_calling_tools_fails_the_attempt_within_bounds(harness: Harness) -> None:
    run = harness.run({}, builder_tools=True, doctor=False, max_attempts=1, tool_max_calls=1)
    assert run["state"] == "DONE_FAILED"
    assert "kept calling tools after 1 calls" in run["failure_reason"]
    assert len(harness.sim.requests) == 3  # 1 allowed call + EXTRA_TURNS, never the 4th answer
    second = results(harness.sim.bodies[1])
    assert second[0] == (False, "src") and second[1][0]
    assert "tool call limit reached (1)" in second[1][1]
    assert len(harness.rows("SELECT id FROM llm_usage_events")) == 3
