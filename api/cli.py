"""`autopack`: serve the API, run workers, migrate, manage keys, and talk to the API over HTTP."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from api import run_cli
from api.approvals_cli import approvals
from api.campaign_cli import campaign
from api.cli_support import fail, settings_client
from api.client import ClientError
from api.patterns_cli import patterns
from api.plan_cli import plan
from api.table import render_keys
from shared.settings import get_settings


@click.group(help=__doc__)
@click.version_option(package_name="autopack-fleet")
def cli() -> None:
    pass


@cli.command()
@click.option("--host", default=None, help="Interface to bind (default: AUTOPACK_API_HOST).")
@click.option("--port", type=int, default=None, help="Port (default: AUTOPACK_API_PORT).")
def api(host: str | None, port: int | None) -> None:
    """Serve the HTTP API (embedded mode also runs in-process workers)."""
    from api.serve import serve

    serve(get_settings(), host, port)


@cli.command()
@click.option("--concurrency", "-c", type=int, default=None, help="Phases at once (default from settings).")
@click.option(
    "--hostname",
    "-n",
    default=None,
    help="Celery node name (default autopack-<pid>@<host>: unique per process, so workers on one host "
    "all show in `autopack fleet`).",
)
def worker(concurrency: int | None, hostname: str | None) -> None:
    """Start a Celery worker on the phase queue (fleet mode: needs Redis and Postgres).

    SIGTERM drains it: running phases get AUTOPACK_DRAIN_SECONDS to finish, then are handed back to
    the queue; the worker exits as soon as none is left.
    """
    from shared.errors import SandboxUnavailable
    from workers.main import run_worker

    settings = get_settings()
    if settings.is_embedded:
        fail(ValueError("the in-process broker cannot serve a separate worker: set AUTOPACK_BROKER_URL"))
    try:
        run_worker(settings, concurrency, hostname)
    except SandboxUnavailable as exc:
        fail(exc)


@cli.command()
@click.option("--port", type=int, default=5555, show_default=True, help="Port to serve Flower on.")
@click.option("--address", default="127.0.0.1", show_default=True, help="Interface to bind (0.0.0.0: all).")
@click.option("--url-prefix", default=None, help="Serve under this path, e.g. `flower` behind a proxy.")
def flower(port: int, address: str, url_prefix: str | None) -> None:
    """Serve Flower (the Celery monitor) on the fleet's broker, behind basic auth.

    Needs AUTOPACK_FLOWER_BASIC_AUTH=user:password and a Redis broker (fleet mode); refuses (exit 2)
    without them.
    """
    from api.flower_cli import refusal, run_flower

    settings = get_settings()
    reason = refusal(settings)
    if reason is not None:
        click.echo(f"autopack flower: {reason}", err=True)
        sys.exit(2)
    sys.exit(run_flower(settings, port, address, url_prefix))


@cli.group()
def db() -> None:
    """Database schema."""


@db.command()
def upgrade() -> None:
    """Migrate the database to the newest schema."""
    from shared.db import upgrade as do_upgrade

    do_upgrade(get_settings().database_url)
    click.echo("database is at the newest schema")


@cli.group()
def keys() -> None:
    """API keys (stored hashed; shown once)."""


@keys.command("create")
@click.argument("name")
@click.option("--owner", default=None, help="Whose runs the key submits and sees (default: NAME).")
@click.option("--admin", is_flag=True, help="Sees every owner's runs and GET /fleet.")
def keys_create(name: str, owner: str | None, admin: bool) -> None:
    """Create a key and print it once."""
    from shared.db import require_migrated, transaction
    from shared.keys import create_key

    url = get_settings().database_url
    require_migrated(url)
    with transaction(url) as session:
        row, plain = create_key(session, name, owner=owner, admin=admin)
        row_id, row_owner = row.id, row.owner
    click.echo(plain)
    click.echo(
        f"key {row_id} ({name}, owner {row_owner}{', admin' if admin else ''}) created; "
        "it is not stored and cannot be shown again",
        err=True,
    )


@keys.command("list")
def keys_list() -> None:
    """List keys: name, owner, admin, the first characters, created and revoked (never the key)."""
    from shared.db import require_migrated, session_factory
    from shared.keys import list_keys

    url = get_settings().database_url
    require_migrated(url)
    with session_factory(url)() as session:
        click.echo(render_keys(list_keys(session)))


@keys.command("revoke")
@click.argument("name")
def keys_revoke(name: str) -> None:
    """Revoke every live key called NAME; requests with it are refused (401) from now on."""
    from shared.db import require_migrated, transaction
    from shared.errors import NotFound
    from shared.keys import revoke_key

    url = get_settings().database_url
    require_migrated(url)
    try:
        with transaction(url) as session:
            n = revoke_key(session, name)
    except NotFound as exc:
        fail(exc)
    click.echo(f"revoked {n} key(s) named {name}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
def fleet(as_json: bool) -> None:
    """Workers, executing phases and their leases, queue length, stuck and waiting runs, redeliveries."""
    try:
        view = settings_client(get_settings()).fleet()
    except ClientError as exc:
        fail(exc)
    click.echo(json.dumps(view, indent=2) if as_json else _describe_fleet(view))


@cli.command()
@click.option("--runs", "n_runs", type=int, default=4, help="Runs to submit.")
@click.option("--dir", "root", type=click.Path(path_type=Path), default=Path(".autopack/demo"))
@click.option("--serve", is_flag=True, help="Keep the API and the dashboard up afterwards, until Ctrl-C.")
@click.option("--port", type=int, default=None, help="Port for --serve (default: AUTOPACK_API_PORT).")
def demo(n_runs: int, root: Path, serve: bool, port: int | None) -> None:
    """Run a sample campaign on the embedded fleet: sample runs, then a replay campaign and its report."""
    from api.demo import run_demo

    serve_port = (port or get_settings().api_port) if serve else None
    sys.exit(run_demo(root, n_runs, serve_port=serve_port))


@cli.command()
def reconcile() -> None:
    """One reconciler pass now: re-dispatch runs whose next phase has no live task."""
    from shared.outbox import reconcile as do_reconcile
    from workers.celery_app import CeleryDispatcher, create_app

    settings = get_settings()
    n = do_reconcile(settings.database_url, CeleryDispatcher(create_app(settings)), 0)
    click.echo(f"re-dispatched {n} phase(s)")


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}s"


def _describe_fleet(view: dict[str, Any]) -> str:
    lines = [
        f"fleet ({view['mode']}) at {view['generated_at']}",
        f"sandbox: {view.get('sandbox', 'unknown')}",
    ]
    workers = view["workers"]
    lines.append(
        f"workers: {len(workers)}"
        + (f"  (inspect failed: {view['workers_error']})" if view.get("workers_error") else "")
    )
    for w in workers:
        tasks = ", ".join(f"run {t['run_id']} phase {t['phase_id']}" for t in w["active"]) or "idle"
        state = "up" if w["alive"] else "DOWN"
        sandbox = f"  sandbox {w['sandbox'].split(' ')[0]}" if w.get("sandbox") else ""
        lines.append(
            f"  {w['name']:<32} {state:<4} {w['pool'] or '?'} x{w['concurrency'] or '?'}{sandbox}  {tasks}"
        )
    queue = view["queue_length"] if view["queue_length"] is not None else f"unknown ({view['queue_error']})"
    lines.append(f"queue {view['queue']}: {queue} message(s)")
    lines.append(f"executing: {len(view['executing'])}")
    for e in view["executing"]:
        expiry = "expired" if not e["lease_live"] else f"expires in {_secs(e['lease_expires_in_seconds'])}"
        lines.append(
            f"  run {e['run_id']} [{e['phase_index']}] {e['phase_name']:<24} owner {e['lease_owner'] or '-'}"
            f"  age {_secs(e['lease_age_seconds'])}  lease {expiry}  deliveries {e['deliveries']}"
        )
    for title in ("stuck", "waiting"):
        lines.append(f"{title}: {len(view[title])}")
        for r in view[title]:
            phase = f"[{r['phase_index']}] {r['phase_name']}" if r["phase_id"] is not None else "-"
            lines.append(f"  run {r['run_id']} {r['run_state']:<8} {phase:<28} {r['reason']}")
    sick = [h for h in view["hosts"] if h["state"] != "HEALTHY"]
    lines.append(f"hosts: {len(view['hosts'])} ({len(sick)} sick)")
    for h in sick:
        lines.append(f"  {h['name']:<32} SICK since {h['sick_since']}: {h['reason']}")
    lines.append(f"redelivered phases: {len(view['redeliveries'])}")
    for d in view["redeliveries"]:
        lines.append(
            f"  run {d['run_id']} [{d['phase_index']}] {d['phase_name']:<24} {d['phase_state']:<10}"
            f" delivered {d['deliveries']}x"
        )
    return "\n".join(lines)


cli.add_command(campaign)
cli.add_command(plan)
cli.add_command(patterns)
cli.add_command(approvals)
for command in run_cli.COMMANDS:
    cli.add_command(command)


def main() -> None:
    cli()
