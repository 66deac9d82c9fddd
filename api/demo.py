"""`autopack demo`: a real sample campaign on the embedded fleet, through the real HTTP API.

Sample runs first; then a replay campaign over them (their recorded changes re-validated, three
samples each, zero spend) with its A/B report, in Markdown on the terminal and as an SVG chart."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import click

from api.campaign_cli import describe
from api.client import ApiClient
from api.sample_repo import make_sample_repo, sample_spec
from api.serve import api_in_thread
from api.table import render_runs
from shared.db import upgrade
from shared.git import git
from shared.settings import Settings
from workers.embedded import embedded_fleet

TERMINAL = {"DONE_SUCCESS", "DONE_FAILED", "CANCELLED"}


def run_demo(root: Path, n_runs: int, concurrency: int = 4, serve_port: int | None = None) -> int:
    """Returns the process exit code: 0 when every run ended DONE_SUCCESS. With `serve_port`, the API
    and dashboard stay up on that port afterwards until Ctrl-C."""
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    settings = Settings(
        database_url=f"sqlite:///{root.resolve()}/autopack.db",
        broker_url="memory://",
        workspace_dir=root.resolve() / "workspace",
        worker_concurrency=concurrency,
        log_level="WARNING",
    )
    upgrade(settings.database_url)
    repo = make_sample_repo(root.resolve() / "sample-repo")
    click.echo(f"sample repository: {repo}  ({concurrency} in-process workers, SQLite at {root}/autopack.db)")
    with embedded_fleet(settings, concurrency) as celery, api_in_thread(settings, celery, serve_port) as url:
        click.echo(f"dashboard: {url}/ui")
        client = ApiClient(url, None)
        ids = [client.submit(sample_spec(repo, i, sys.executable))["id"] for i in range(n_runs)]
        click.echo(f"submitted runs {ids} over HTTP at {url}")
        runs = _watch(client, ids)
        click.echo("\n" + render_runs(runs))
        for r in runs:
            log = git("log", "--format=%h %s", f"{r['base_sha']}..{r['result_branch']}", cwd=repo).strip()
            click.echo(f"\n{r['result_branch']} in {repo}:\n  " + "\n  ".join(reversed(log.splitlines())))
        campaign_ok = _campaign(client, ids, root) if ids else True
        if serve_port is not None:
            _serve_until_interrupted(url)
    return 0 if all(r["state"] == "DONE_SUCCESS" for r in runs) and campaign_ok else 1


def _serve_until_interrupted(url: str) -> None:
    click.echo(f"\nserving the API and the dashboard at {url}/ui until Ctrl-C")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        click.echo("stopped")


def _campaign(client: ApiClient, ids: list[int], root: Path) -> bool:
    """Replay the runs as a campaign, wait for it, print its report; True when every child succeeded."""
    spec = {"name": "demo-replay", "source": {"run_ids": ids}, "mode": "replay", "repeats": 3}
    created = client.create_campaign(spec)
    click.echo(
        f"\ncampaign {created['id']}: replaying {len(ids)} runs x 3 samples ({created['children']} runs)"
    )
    while (view := client.campaign(created["id"]))["state"] == "ACTIVE":
        time.sleep(0.2)
    click.echo(describe(view) + "\n")
    click.echo(client.campaign_report_text(created["id"], "md"))
    chart = root / "campaign-report.svg"
    chart.write_text(client.campaign_report_text(created["id"], "svg"))
    click.echo(f"chart: {chart}")
    return bool(view["children_by_state"] == {"DONE_SUCCESS": created["children"]})


def _watch(client: ApiClient, ids: list[int], timeout: float = 600) -> list[dict[str, object]]:
    seen: dict[tuple[int, int], str] = {}
    start = time.monotonic()
    while True:
        runs = [client.run(i) for i in ids]
        for r in runs:
            for p in r["phases"]:
                key = (r["id"], p["index"])
                if seen.get(key) != p["state"]:
                    seen[key] = p["state"]
                    click.echo(
                        f"{time.monotonic() - start:6.2f}s  run {r['id']} phase {p['index']} "
                        f"{p['name']:<16} {p['state']}"
                    )
        if all(r["state"] in TERMINAL for r in runs) or time.monotonic() - start > timeout:
            return runs
        time.sleep(0.1)
