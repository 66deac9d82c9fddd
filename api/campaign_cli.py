"""`autopack campaign …`: create a campaign from a YAML file, watch it, cancel it, read its report."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click
import yaml

from api.cli_support import fail, settings_client
from api.client import ApiClient, ClientError

ENDED = {"DONE", "CANCELLED"}


@click.group()
def campaign() -> None:
    """Replay campaigns: re-run earlier runs with changed settings and compare (A/B)."""


@campaign.command("create")
@click.argument("spec", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def create(spec: Path) -> None:
    """Create a campaign described by a YAML (or JSON) file; print its id and what it left out."""
    try:
        out = settings_client().create_campaign(yaml.safe_load(spec.read_text()))
    except ClientError as exc:
        fail(exc)
    click.echo(f"campaign {out['id']}: {out['children']} child runs, {out['dispatched']} started")
    for s in out["skipped_sources"]:
        click.echo(f"  left out run {s['run_id']}: {s['reason']}")


@campaign.command("list")
@click.option("--limit", type=int, default=20)
def list_(limit: int) -> None:
    """List recent campaigns with their progress."""
    try:
        page = settings_client().campaigns(limit=limit)
    except ClientError as exc:
        fail(exc)
    for c in page["items"]:
        click.echo(summary(c))


@campaign.command("status")
@click.argument("campaign_id", type=int)
@click.option("--watch", is_flag=True, help="Follow it (a live bar on a terminal) until it ends.")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
def status(campaign_id: int, watch: bool, as_json: bool) -> None:
    """Children by state, spend against the caps, ETA."""
    client = settings_client()
    try:
        if watch and not as_json and sys.stdout.isatty():
            _live(client, campaign_id)
            return
        printed = None
        while True:
            view = client.campaign(campaign_id)
            # Off a terminal, like `autopack status --watch`: print on a change, not on every poll.
            if _progress_of(view) != printed:
                click.echo(json.dumps(view, indent=2) if as_json else describe(view))
                printed = _progress_of(view)
            if not watch or view["state"] in ENDED:
                return
            time.sleep(2)
    except ClientError as exc:
        fail(exc)


def _progress_of(view: dict[str, Any]) -> str:
    """What counts as a change: states, counts, spend and caps; not the ETA, which moves every poll."""
    return json.dumps({k: v for k, v in view.items() if k != "eta_seconds"}, sort_keys=True, default=str)


def _live(client: ApiClient, campaign_id: int) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, TextColumn("{task.fields[detail]}")) as bar:
        view = client.campaign(campaign_id)
        task = bar.add_task(f"campaign {campaign_id}", total=view["children"], detail="")
        while True:
            bar.update(task, completed=view["ended"], detail=_detail(view))
            if (view["state"] in ENDED and view["ended"] >= view["children"]) or view["state"] == "CANCELLED":
                break
            time.sleep(1)
            view = client.campaign(campaign_id)
    click.echo(describe(view))


@campaign.command("cancel")
@click.argument("campaign_id", type=int)
def cancel(campaign_id: int) -> None:
    """Cancel: children not started end now, running ones stop before their next attempt."""
    try:
        view = settings_client().cancel_campaign(campaign_id)
    except ClientError as exc:
        fail(exc)
    click.echo(summary(view))


@campaign.command("report")
@click.argument("campaign_id", type=int)
@click.option("--format", "fmt", type=click.Choice(["md", "json", "svg"]), default="md", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Write to a file.")
def report(campaign_id: int, fmt: str, output: Path | None) -> None:
    """The A/B report: per-arm figures, paired deltas with CIs, McNemar, excluded pairs."""
    client = settings_client()
    try:
        if fmt == "json":
            text = json.dumps(client.campaign_report(campaign_id), indent=2)
        else:
            text = client.campaign_report_text(campaign_id, fmt)
    except ClientError as exc:
        fail(exc)
    if output is None:
        click.echo(text)
    else:
        output.write_text(text)
        click.echo(f"wrote {output}", err=True)


def summary(view: dict[str, Any]) -> str:
    return (
        f"campaign {view['id']} {view['name'] or ''}  {view['mode']}  {view['state']}  "
        f"{view['ended']}/{view['children']} ended  {_detail(view)}"
    )


def _detail(view: dict[str, Any]) -> str:
    spend = view["spend"]
    usd = f"${spend['usd_spent']}" + (f" of ${spend['max_usd']}" if spend["max_usd"] else "")
    tokens = f"{spend['tokens_spent']} tok" + (f" of {spend['max_tokens']}" if spend["max_tokens"] else "")
    eta = "" if view["eta_seconds"] is None else f"  ETA {view['eta_seconds']:.0f}s"
    return f"{usd}  {tokens}{eta}"


def describe(view: dict[str, Any]) -> str:
    lines = [summary(view)]
    states = "  ".join(f"{k} {v}" for k, v in sorted(view["children_by_state"].items()))
    lines.append(f"  children: {states}  (held {view['held']})")
    pairs = "  ".join(f"{k} {v}" for k, v in sorted(view["pairs_by_state"].items()))
    lines.append(f"  pairs: {pairs}")
    if view["cap_reached"]:
        lines.append(f"  cap reached: {view['cap_reached']}")
    for s in view["skipped_sources"][:10]:
        lines.append(f"  left out run {s['run_id']}: {s['reason']}")
    return "\n".join(lines)
