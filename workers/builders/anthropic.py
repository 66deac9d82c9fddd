"""The `anthropic` builder: Claude writes the change (a unified diff or whole-file blocks).

With `request.tools` it may first call read-only tools (`workers.builders.tools`); its final answer is
parsed exactly as a single call's answer.
"""

from __future__ import annotations

from shared.errors import LlmRequestError
from workers.builders.base import BuildRequest, BuildResult
from workers.builders.tools import ToolBox, run_tool_loop
from workers.builders.tools.loop import ToolLoopError, tools_note
from workers.context import select_context
from workers.llm.client import LlmResponse
from workers.llm.prompts import builder_prompt, prompt_summary


class AnthropicBuilder:
    name = "anthropic"

    def build(self, request: BuildRequest) -> BuildResult:
        assert request.gateway is not None and request.model and request.max_tokens
        hints = "\n".join(filter(None, [request.previous_failure, request.advice]))
        context = select_context(request.worktree, request.phase, request.context_budget_tokens, hints=hints)
        system, messages = builder_prompt(
            request.phase,
            context,
            attempt=request.attempt,
            previous_failure=request.previous_failure,
            advice=request.advice,
        )
        summary = prompt_summary(context, attempt=request.attempt, advice=request.advice)
        record = context.summary()
        try:
            response = self._answer(request, system, messages, record)
        except (LlmRequestError, ToolLoopError) as exc:
            # The provider refused this request (prompt too long, a parameter it rejects), or the model
            # never stopped calling tools: the attempt fails with its reason, recorded like any build
            # failure, and the phase goes on or ends.
            return BuildResult(False, "", str(exc), None, None, record, summary)
        if response.truncated:
            reason = (
                f"answer truncated: stop_reason {response.stop_reason} at max_tokens={request.max_tokens}; "
                "the change was not applied"
            )
            return BuildResult(False, response.text, reason, None, response, record, summary)
        return BuildResult(True, response.text, None, response.text, response, record, summary)

    def _answer(
        self, request: BuildRequest, system: str, messages: list[dict[str, str]], record: dict[str, object]
    ) -> LlmResponse:
        """The final answer: one call, or the tool loop's last turn (its tool log goes into `record`)."""
        assert request.gateway is not None and request.model and request.max_tokens
        if request.tools is None:
            return request.gateway.call(
                role="builder",
                attempt=request.attempt,
                model=request.model,
                system=system,
                messages=list(messages),
                max_tokens=request.max_tokens,
            )
        box = ToolBox(request.worktree, request.phase, request.tools)
        record["tool_calls"] = box.log  # filled as the loop runs, so a failed loop still shows its calls
        result = run_tool_loop(
            request.gateway,
            box,
            attempt=request.attempt,
            model=request.model,
            system=system + tools_note(box),
            messages=list(messages),
            max_tokens=request.max_tokens,
        )
        record["model_turns"] = result.turns
        return result.final
