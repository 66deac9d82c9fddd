"""Builders by name: `config.builder` picks one."""

from __future__ import annotations

from workers.builders.anthropic import AnthropicBuilder
from workers.builders.base import Builder, BuildRequest, BuildResult
from workers.builders.replay import ReplayBuilder
from workers.builders.script import ScriptBuilder

BUILDERS: dict[str, type[Builder]] = {
    "script": ScriptBuilder,
    "anthropic": AnthropicBuilder,
    "replay": ReplayBuilder,
}
LLM_BUILDERS = frozenset({"anthropic"})


def get_builder(name: str) -> Builder:
    try:
        return BUILDERS[name]()
    except KeyError:
        raise ValueError(f"unknown builder {name!r}; known: {', '.join(sorted(BUILDERS))}") from None


__all__ = ["BUILDERS", "LLM_BUILDERS", "BuildRequest", "BuildResult", "Builder", "get_builder"]
