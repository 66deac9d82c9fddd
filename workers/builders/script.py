"""The `script` builder: the phase's own command (a codemod, a formatter) makes the change. No LLM."""

from __future__ import annotations

from workers.builders.base import BuildRequest, BuildResult
from workers.commands import CommandResult, run_command


class ScriptBuilder:
    name = "script"

    def build(self, request: BuildRequest) -> BuildResult:
        command = request.phase.command
        if command is None:
            return BuildResult(ok=False, output="", failure_reason="script builder: phase has no command")
        env = {
            "AUTOPACK_PHASE_NAME": request.phase.name,
            "AUTOPACK_ATTEMPT": str(request.attempt),
            "AUTOPACK_RUN": str(request.run_id),
        }
        result = run_command(
            command,
            request.worktree,
            timeout=request.timeout,
            max_bytes=request.max_log_bytes,
            env=env,
            network=request.phase.network,
        )
        if result.ok:
            return BuildResult(ok=True, output=result.summary())
        return BuildResult(ok=False, output=result.summary(), failure_reason=_reason(result))


def _reason(result: CommandResult) -> str:
    """The failure reason names the sandbox limit first: the log's head may not show it."""
    head = f"command failed ({result.limit})" if result.limit else "command failed"
    return f"{head}: {result.summary()[:2000]}"
