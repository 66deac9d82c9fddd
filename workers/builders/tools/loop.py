"""The tool-use loop of one builder attempt, over the SDK's tool-use API and through the gateway.

Each turn is one `LlmGateway.call` (budget reserved first, an ordinary usage row after), so caps hold
mid-loop: a `BudgetExceeded` raised before turn n propagates exactly as it does for a single call. A
turn whose answer asks for tools gets one `tool_result` per `tool_use` (an error result for a refused
or malformed call, never an exception); a turn that asks for none is the final answer, returned for
parsing exactly as a single call's answer is. The loop ends after `max_calls + EXTRA_TURNS` turns at
most: a model that keeps asking for tools past its allowance fails the attempt.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from shared.errors import InfraFailure
from workers.builders.tools.fs import ToolBox, ToolError

if TYPE_CHECKING:
    from workers.llm.client import LlmResponse, ToolUse
    from workers.llm.gateway import LlmGateway

EXTRA_TURNS = 2
"""Turns allowed past the call allowance: the model learns it is used up, then must answer."""

TOOLS: list[dict[str, Any]] = [
    {
        "name": "read_range",
        "description": "Read lines of a file in the phase's scope or read-only context, numbered.",
        "input_schema": {
            "type": "object",
            "properties": {
                "path": {"type": "string", "description": "repository-relative path"},
                "start_line": {"type": "integer", "minimum": 1},
                "end_line": {"type": "integer", "description": "inclusive; 0 = 200 lines from start"},
            },
            "required": ["path"],
        },
    },
    {
        "name": "grep",
        "description": "Search the phase's files for a Python regular expression; returns path:line: text.",
        "input_schema": {
            "type": "object",
            "properties": {
                "pattern": {"type": "string"},
                "path": {"type": "string", "description": "optional file or directory to search under"},
            },
            "required": ["pattern"],
        },
    },
    {
        "name": "list_dir",
        "description": "List a directory of the phase's files ('' lists the phase's entries).",
        "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}},
    },
]


class ToolLoopError(Exception):
    """The loop ended without a final answer; the message is the attempt's failure reason."""


@dataclass(frozen=True)
class ToolLoopResult:
    final: LlmResponse
    """The final answer; its `infra_retries` are those of every turn."""
    turns: int
    log: list[dict[str, object]]


def tools_note(box: ToolBox) -> str:
    """What the system prompt adds when tools are offered."""
    limits = box.limits
    return (
        "\nTools: before answering you may call read_range, grep and list_dir to read this phase's scope "
        f"and read-only files (at most {limits.max_calls} calls and {limits.max_bytes} bytes of results). "
        "They only read; nothing runs. When you have what you need, answer with the change in the "
        "format above and call no tool in that answer.\n"
    )


def run_tool_loop(
    gateway: LlmGateway,
    box: ToolBox,
    *,
    attempt: int,
    model: str,
    system: str,
    messages: list[dict[str, Any]],
    max_tokens: int,
) -> ToolLoopResult:
    conversation: list[dict[str, Any]] = list(messages)
    retries: list[InfraFailure] = []
    for turn in range(1, box.limits.max_calls + EXTRA_TURNS + 1):
        response = gateway.call(
            role="builder",
            attempt=attempt,
            model=model,
            system=system,
            messages=conversation,
            max_tokens=max_tokens,
            tools=TOOLS,
        )
        retries += response.infra_retries
        if not response.tool_uses or response.truncated:
            return ToolLoopResult(replace(response, infra_retries=tuple(retries)), turn, box.log)
        conversation.append({"role": "assistant", "content": list(response.content)})
        conversation.append({"role": "user", "content": [_result(box, use) for use in response.tool_uses]})
    raise ToolLoopError(f"the model kept calling tools after {box.limits.max_calls} calls; no change given")


def _result(box: ToolBox, use: ToolUse) -> dict[str, Any]:
    entry: dict[str, object] = {"tool": use.name, "input": json.dumps(use.input)[:300]}
    try:
        text, error = box.run(use.name, use.input), False
    except ToolError as exc:
        text, error = str(exc), True
        entry["error"] = text
    entry["bytes"] = len(text.encode("utf-8"))
    box.log.append(entry)
    return {"type": "tool_result", "tool_use_id": use.id, "content": text, "is_error": error}
