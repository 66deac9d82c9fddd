"""Talking to LLM providers: a thin client over the `anthropic` SDK, its retries, usage and cost."""
