"""The `anthropic` builder: Claude writes the change (a unified diff or whole-file blocks)."""

from __future__ import annotations

from shared.errors import LlmRequestError
from workers.builders.base import BuildRequest, BuildResult
from workers.context import select_context
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
        try:
            response = request.gateway.call(
                role="builder",
                attempt=request.attempt,
                model=request.model,
                system=system,
                messages=messages,
                max_tokens=request.max_tokens,
            )
        except LlmRequestError as exc:
            # The provider refused this request (prompt too long, a parameter it rejects): the attempt
            # fails with its reason, recorded like any build failure, and the phase goes on or ends.
            reason = str(exc)
            return BuildResult(ok=False, output="", failure_reason=reason, prompt_summary=summary)
        common = {"llm": response, "context": context.summary(), "prompt_summary": summary}
        if response.truncated:
            reason = (
                f"answer truncated: stop_reason {response.stop_reason} at max_tokens={request.max_tokens}; "
                "the change was not applied"
            )
            return BuildResult(ok=False, output=response.text, failure_reason=reason, **common)  # type: ignore[arg-type]
        return BuildResult(ok=True, output=response.text, patch=response.text, **common)  # type: ignore[arg-type]
