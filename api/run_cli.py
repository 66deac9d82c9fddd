"""`autopack submit | status | runs | logs | cancel`: runs over the HTTP API.

On a terminal these draw with `rich` (a live phase table, coloured tables, highlighted diffs); when
stdout is not a terminal (a pipe, a log file, CI) they print plain lines with no escape codes, and
`status --watch` prints only what changed.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import yaml

from api.cli_support import fail, settings_client
from api.client import ApiClient, ClientError
from api.run_view import (
    TERMINAL,
    attempts_display,
    attempts_plain,
    changes,
    run_display,
    runs_table,
)
from api.table import render_runs
from shared.git import is_local
from shared.states import RunState

if TYPE_CHECKING:
    from rich.console import Console

POLL_SECONDS = 1.0


def _terminal() -> bool:
    """Draw with rich only for a person: the same test `campaign status --watch` uses."""
    return sys.stdout.isatty()


def _print_rich(renderable: Any) -> None:
    from rich.console import Console

    Console().print(renderable)


@click.command()
@click.argument("spec", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-q", "--quiet", is_flag=True, help="Print the run id alone (RID=$(autopack submit -q FILE)).")
def submit(spec: Path, quiet: bool) -> None:
    """Submit a run described by a YAML (or JSON) file; print its id, state, base commit and branch."""
    body = yaml.safe_load(spec.read_text())
    repo = body.get("repo") if isinstance(body, dict) else None
    if isinstance(repo, str) and is_local(repo) and not Path(repo).is_absolute():
        body["repo"] = str((spec.parent / repo).resolve())  # the API may run elsewhere: send a full path
    try:
        run = settings_client().submit(body)
    except ClientError as exc:
        fail(exc)
    if quiet:
        click.echo(run["id"])
        return
    click.echo(f"run {run['id']} {run['state']} at {run['base_sha'][:12]} -> branch {run['result_branch']}")


@click.command()
@click.argument("run_id", type=int)
@click.option("--watch", is_flag=True, help="Follow it until it ends (live table on a terminal).")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
def status(run_id: int, watch: bool, as_json: bool) -> None:
    """Show a run and its phases: state, attempts, elapsed time, the last failure reason."""
    client = settings_client()
    try:
        if as_json:
            _watch_json(client, run_id, watch)
        elif _terminal() and watch:
            _watch_live(client, run_id)
        elif _terminal():
            _print_rich(run_display(client.run(run_id)))
        else:
            _watch_plain(client, run_id, watch)
    except ClientError as exc:
        fail(exc)
    except KeyboardInterrupt:
        sys.exit(130)


def _watch_live(client: ApiClient, run_id: int, console: Console | None = None) -> None:
    """Redraw the phase table in place every second until the run ends; the last frame stays."""
    from rich.live import Live

    run = client.run(run_id)
    with Live(run_display(run), console=console, auto_refresh=False) as live:
        while run["state"] not in TERMINAL:
            time.sleep(POLL_SECONDS)
            run = client.run(run_id)
            live.update(run_display(run), refresh=True)


def _watch_json(client: ApiClient, run_id: int, watch: bool) -> None:
    """The run's JSON, then (with --watch) again each time it changes."""
    printed = None
    while True:
        run = client.run(run_id)
        if run != printed:
            click.echo(json.dumps(run, indent=2))
            printed = run
        if not watch or run["state"] in TERMINAL:
            return
        time.sleep(POLL_SECONDS)


def _watch_plain(client: ApiClient, run_id: int, watch: bool) -> None:
    """The whole run once, then (with --watch) only the lines that changed: readable in a log."""
    before: dict[str, Any] | None = None
    while True:
        run = client.run(run_id)
        for line in changes(before, run):
            click.echo(line)
        if not watch or run["state"] in TERMINAL:
            return
        before = run
        time.sleep(POLL_SECONDS)


@click.command()
@click.option(
    "--state", type=click.Choice([s.value for s in RunState]), default=None, help="Only runs in this state."
)
@click.option("--limit", type=click.IntRange(1, 200), default=20, show_default=True)
@click.option("--campaign", "campaign_id", type=int, default=None, help="Only this campaign's child runs.")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON page.")
def runs(state: str | None, limit: int, campaign_id: int | None, as_json: bool) -> None:
    """List recent runs, newest first."""
    try:
        page = settings_client().runs(state=state, limit=limit, campaign_id=campaign_id)
    except ClientError as exc:
        fail(exc)
    if as_json:
        click.echo(json.dumps(page, indent=2))
    elif _terminal():
        _print_rich(runs_table(page["items"]))
    else:
        click.echo(render_runs(page["items"]))


# `autopack list` was the name before `runs`; scripts and muscle memory keep working.
list_alias = click.Command(
    "list", callback=runs.callback, params=runs.params, help="Alias of `autopack runs`.", hidden=True
)


@click.command()
@click.argument("run_id", type=int)
@click.argument("phase", required=False)
@click.option(
    "--lines",
    type=click.IntRange(0),
    default=60,
    show_default=True,
    help="Last lines of builder and validation output to show (0: all).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON attempts.")
def logs(run_id: int, phase: str | None, lines: int, as_json: bool) -> None:
    """Each attempt's outputs: outcome, failure reason, builder output, the diff, validation output,
    mitigation and Doctor advice. PHASE (an index or a name) limits it to one phase."""
    client = settings_client()
    try:
        index = None if phase is None else _phase_index(client, run_id, phase)
        attempts = client.attempts(run_id, index)
    except (ClientError, click.BadParameter) as exc:
        fail(exc)
    if as_json:
        click.echo(json.dumps(attempts, indent=2))
    elif not attempts:
        click.echo(f"run {run_id}: no attempt recorded yet" + (f" for phase {phase}" if phase else ""))
    elif _terminal():
        _print_rich(attempts_display(attempts, lines))
    else:
        click.echo(attempts_plain(attempts, lines))


def _phase_index(client: ApiClient, run_id: int, phase: str) -> int:
    if phase.isdigit():
        return int(phase)
    names = {p["name"]: p["index"] for p in client.run(run_id)["phases"]}
    if phase not in names:
        raise click.BadParameter(f"run {run_id} has no phase {phase!r} (phases: {', '.join(names)})")
    return int(names[phase])


@click.command()
@click.argument("run_id", type=int)
def cancel(run_id: int) -> None:
    """Cancel a run (a phase in flight stops at its next step)."""
    try:
        run = settings_client().cancel(run_id)
    except ClientError as exc:
        fail(exc)
    click.echo(f"run {run_id}: {run['state']}" + (" (cancel requested)" if run["cancel_requested"] else ""))


COMMANDS = (submit, status, runs, list_alias, logs, cancel)
