"""`autopack approvals …`: governed changes waiting for a person; show one, approve or reject it."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click

from api.cli_support import fail, settings_client
from api.client import ApiClient, ClientError


def _call(what: Callable[[ApiClient], Any]) -> Any:
    try:
        return what(settings_client())
    except ClientError as exc:
        fail(exc)


@click.group(invoke_without_command=True)
@click.option("--state", default="pending", show_default=True, help="pending, approved, rejected, ...")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")
@click.pass_context
def approvals(ctx: click.Context, state: str, as_json: bool) -> None:
    """Approvals (newest first): id, run and phase, attempt, ruled paths with their tiers, expiry."""
    if ctx.invoked_subcommand is not None:
        return
    page = _call(lambda c: c.approvals(state))
    if as_json:
        click.echo(json.dumps(page, indent=2))
        return
    for a in page["items"]:
        paths = ", ".join(f"{p['path']} ({p['tier']})" for p in a["paths"])
        when = (
            f"expires {a['expires_at']}" if a["state"] == "pending" else f"{a['state']} by {a['decided_by']}"
        )
        click.echo(
            f"#{a['id']} run {a['run_id']} phase {a['phase_index']} attempt {a['attempt']}: {paths}; {when}"
        )
    if not page["items"]:
        click.echo(f"no {state} approvals")


@approvals.command("show")
@click.argument("approval_id", type=int)
def show(approval_id: int) -> None:
    """The phase goal, the ruled paths and the diff."""
    a = _call(lambda c: c.approval(approval_id))
    click.echo(
        f"approval {a['id']} ({a['state']}): run {a['run_id']} phase {a['phase_index']} {a['phase_name']}"
    )
    click.echo(f"goal: {a['goal']}")
    for p in a["paths"]:
        click.echo(f"  {p['path']}: {p['tier']}, {p['policy']} ({p['pattern']})")
    click.echo(a["diff"] or f"(no diff kept; the change is {a['commit_sha']} at {a['ref']})")


@approvals.command("approve")
@click.argument("approval_id", type=int)
@click.option("--reason", default=None, help="Why it may go in (stored with the decision).")
def approve(approval_id: int, reason: str | None) -> None:
    """Let the change in: its phase resumes and validates it."""
    a = _call(lambda c: c.decide(approval_id, "approve", reason))
    click.echo(f"approval {a['id']}: {a['state']} by {a['decided_by']}")


@approvals.command("reject")
@click.argument("approval_id", type=int)
@click.option("--reason", required=True, help="Why not: the next attempt's prompt is given it.")
def reject(approval_id: int, reason: str) -> None:
    """Refuse the change: the attempt fails with REASON and the phase retries within its budget."""
    a = _call(lambda c: c.decide(approval_id, "reject", reason))
    click.echo(f"approval {a['id']}: {a['state']} by {a['decided_by']}")
