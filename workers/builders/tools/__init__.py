"""Read-only tools a builder may call within one attempt, and the loop that serves them to Claude."""

from workers.builders.tools.fs import ToolBox, ToolError, ToolLimits
from workers.builders.tools.loop import ToolLoopResult, run_tool_loop

__all__ = ["ToolBox", "ToolError", "ToolLimits", "ToolLoopResult", "run_tool_loop"]
