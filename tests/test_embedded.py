"""Embedded mode: SQLite, the in-process broker and worker threads, through the real HTTP API."""

from __future__ import annotations

import json
import time
from itertools import pairwise
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from api import cli, cli_support
from api.client import ApiClient
from api.demo import run_demo
from api.serve import api_in_thread
from shared.settings import Settings
from tests.support.scenario import check_scenario, submit_runs, wait_terminal
from workers.embedded import embedded_fleet


def test_embedded_fleet_runs_six_runs_of_three_phases_in_parallel_and_in_order(
    embedded_settings: Settings, sample_repo: Path
) -> None:
    with embedded_fleet(embedded_settings, 4) as celery, api_in_thread(embedded_settings, celery) as url:
        client = ApiClient(url, None)
        ids = submit_runs(client, sample_repo, 6)
        runs = wait_terminal(client, ids, timeout=180)
    check_scenario(sample_repo, runs)


def test_embedded_api_needs_no_key_by_default(embedded_settings: Settings) -> None:
    with embedded_fleet(embedded_settings, 1) as celery, api_in_thread(embedded_settings, celery) as url:
        assert ApiClient(url, None).runs()["items"] == []


def test_the_demo_runs_sample_runs_then_a_replay_campaign_and_prints_its_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "demo"
    assert run_demo(root, n_runs=2, concurrency=2) == 0
    out = capsys.readouterr().out
    assert "replaying 2 runs x 3 samples (6 runs)" in out
    assert "only 6 valid pairs; at least 10 are needed for a delta" in out  # said, not a made-up delta
    ElementTree.parse(root / "campaign-report.svg")  # a well-formed chart
    with sa.create_engine(f"sqlite:///{root}/autopack.db").connect() as conn:
        pairs = conn.execute(sa.text("SELECT state, count(*) FROM campaign_pairs GROUP BY state")).all()
        children = (
            conn.execute(sa.text("SELECT config FROM runs WHERE campaign_id IS NOT NULL")).scalars().all()
        )
        usage = conn.execute(sa.text("SELECT count(*) FROM llm_usage_events")).scalar_one()
    assert pairs == [("VALID", 6)]
    assert len(children) == 6 and all(json.loads(c)["builder"] == "replay" for c in children)
    assert usage == 0


def quick_spec(repo: Path, i: int) -> dict[str, Any]:
    phase = {"name": "note", "scope": ["note.txt"], "command": f"echo {i} > note.txt", "validation": ["true"]}
    return {"repo": str(repo), "name": f"quick-{i}", "phases": [phase]}


def test_the_campaign_cli_creates_follows_and_reports_in_plain_text_off_a_terminal(
    embedded_settings: Settings, sample_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with embedded_fleet(embedded_settings, 2) as celery, api_in_thread(embedded_settings, celery) as url:
        monkeypatch.setattr(
            cli_support, "get_settings", lambda: embedded_settings.model_copy(update={"api_url": url})
        )
        client = ApiClient(url, None)
        ids = [client.submit(quick_spec(sample_repo, i))["id"] for i in range(2)]
        wait_terminal(client, ids, timeout=120)
        spec = tmp_path / "campaign.yaml"
        spec.write_text(f"name: cli\nsource: {{run_ids: {ids}}}\nmode: replay\nrepeats: 5\n")
        created = CliRunner().invoke(cli.cli, ["campaign", "create", str(spec)])
        watched = CliRunner().invoke(cli.cli, ["campaign", "status", "1", "--watch"])
        report = CliRunner().invoke(cli.cli, ["campaign", "report", "1"])
        bad = CliRunner().invoke(cli.cli, ["campaign", "status", "99"])
    assert created.exit_code == 0 and "campaign 1: 10 child runs, 10 started" in created.output
    assert watched.exit_code == 0 and "DONE" in watched.output and "DONE_SUCCESS 10" in watched.output
    assert "\x1b[" not in watched.output  # no live bar or colour when stdout is not a terminal
    blocks = ["campaign 1 " + b for b in watched.output.split("campaign 1 ")[1:]]
    assert all(a != b for a, b in pairwise(blocks)), "printed again without a change"
    assert report.exit_code == 0 and "McNemar" in report.output and "10" in report.output
    assert bad.exit_code == 1 and "404" in bad.output


def test_an_embedded_fleet_stops_at_once_and_the_next_one_runs_a_phase(
    embedded_settings: Settings, sample_repo: Path
) -> None:
    """Celery's consumer loop waits 2 s between looks at its stop flag; the embedded transport caps
    each wait (workers/memory_transport.py), so a fleet stops in a fraction of that, and no thread of
    the stopped fleet is left to take the next fleet's messages from the process-wide memory broker."""
    stops = []
    for i in range(3):
        with embedded_fleet(embedded_settings, 2) as celery, api_in_thread(embedded_settings, celery) as url:
            client = ApiClient(url, None)
            run = wait_terminal(client, [client.submit(quick_spec(sample_repo, i))["id"]], timeout=60)[0]
            assert run["state"] == "DONE_SUCCESS"
            start = time.perf_counter()
        stops.append(time.perf_counter() - start)
    assert max(stops) < 1.0, stops
