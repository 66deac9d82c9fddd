"""`autopack plan normalize PLAN.md > run.yaml`: a Markdown plan as a run spec draft, over the HTTP API."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TextIO

import click
import yaml

from api.cli_support import fail, settings_client
from api.client import ClientError
from shared.git import is_local


@click.group()
def plan() -> None:
    """Markdown plans."""


@plan.command()
@click.argument("plan_file", type=click.File("r"), metavar="PLAN.md")
@click.option("--repo", default=".", show_default=True, help="The repository (a local path).")
@click.option("--ref", "base_ref", default="main", show_default=True, help="Base ref of the run.")
@click.option("--name", default=None, help="Run name (default: the plan's title).")
@click.option("--explain", is_flag=True, help="Also print where each value came from (stderr).")
@click.option(
    "--llm",
    is_flag=True,
    help="Let one model call refine goals and scope (needs AUTOPACK_ANTHROPIC_API_KEY on the API; "
    "spends at most AUTOPACK_PLAN_LLM_MAX_TOKENS, recorded on a plan draft).",
)
@click.option("--llm-model", default=None, help="Model of the --llm pass (default: the cheapest builder).")
def normalize(
    plan_file: TextIO,
    repo: str,
    base_ref: str,
    name: str | None,
    explain: bool,
    llm: bool,
    llm_model: str | None,
) -> None:
    """Print the run spec draft of PLAN.md (`-` reads stdin) as YAML; warnings go to stderr.

    The YAML can be submitted as it is: `autopack submit run.yaml`. With --llm, a model refines each
    phase's goal and scope (only paths that exist are kept; the LLM's values say `llm` in --explain);
    the plan draft's id, tokens and cost go to stderr. A failed call or an unusable answer still prints
    the deterministic draft, with a warning saying why."""
    if is_local(repo):
        repo = str(Path(repo).resolve())  # the API may run elsewhere: send a full path
    body: dict[str, Any] = {"repo": repo, "base_ref": base_ref, "plan": plan_file.read(), "name": name}
    if llm:
        body.update(llm=True, llm_model=llm_model)
    try:
        draft = settings_client().normalize_plan(body)
    except ClientError as exc:
        fail(exc)
    click.echo(yaml.safe_dump(draft["spec"], sort_keys=False, allow_unicode=True), nl=False)
    for warning in draft["warnings"]:
        click.echo(f"warning: {_where(warning)}{warning['message']}", err=True)
    if draft.get("llm"):
        done = draft["llm"]
        cost = f"${done['cost_usd']}" if done["cost_usd"] is not None else "cost unknown"
        click.echo(
            f"llm: plan draft {done['draft_id']} {done['state']} ({done['model']}, {done['tokens']} tokens, "
            f"{cost})",
            err=True,
        )
    if explain:
        for key, source in draft["provenance"].items():
            click.echo(f"{key}: {source}", err=True)


def _where(warning: dict[str, Any]) -> str:
    parts = [f"line {warning['line']}" if warning.get("line") else None, warning.get("field")]
    text = ": ".join(p for p in parts if p)
    return f"{text}: " if text else ""
