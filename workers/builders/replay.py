"""The `replay` builder: re-emits what a source run's builder answered, attempt by attempt. Zero spend."""

from __future__ import annotations

from workers.builders.base import BuildRequest, BuildResult


class ReplayBuilder:
    name = "replay"

    def build(self, request: BuildRequest) -> BuildResult:
        if request.recorded_output is None:
            reason = f"replay: the source run recorded no change for phase {request.phase.name!r}"
            return BuildResult(ok=False, output="", failure_reason=reason)
        return BuildResult(ok=True, output=request.recorded_output, patch=request.recorded_output)
