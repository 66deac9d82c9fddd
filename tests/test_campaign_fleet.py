"""Campaigns end to end: an `autopack api` process, two `autopack worker` processes, Postgres, Redis,
real git repositories, and the real `anthropic` SDK talking to the local Messages simulator, whose
scripted model decides each task's answer (tests/support/campaigns.py)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from pydantic import SecretStr
from scipy.stats import binomtest
from statsmodels.stats.contingency_tables import mcnemar

from api.client import ApiClient
from api.serve import free_port
from shared.db import transaction
from shared.git import git
from shared.keys import create_key
from shared.settings import Settings
from tests.support.campaigns import (
    CHECK,
    HAIKU,
    LENIENT,
    SONNET,
    TASK,
    Decide,
    router,
    task_spec,
    wait_campaign,
)
from tests.support.procs import api_process, worker_process
from tests.support.scenario import wait_terminal
from tests.support.simulator import MessagesSimulator

pytestmark = pytest.mark.fleet


@contextmanager
def llm_fleet(
    settings: Settings, tmp_path: Path, decide: Decide
) -> Iterator[tuple[ApiClient, MessagesSimulator]]:
    """The simulator, an API process and two workers (separate workspaces, as on two hosts)."""
    with MessagesSimulator(router(decide)) as sim:
        settings = settings.model_copy(
            update={
                "anthropic_api_key": SecretStr("sk-campaign-test"),
                "anthropic_base_url": sim.base_url,
                "llm_max_retries": 1,
                "llm_backoff_base_seconds": 0.05,
                "llm_backoff_cap_seconds": 0.1,
                "max_deliveries": 2,
                "redispatch_after_seconds": 2,
            }
        )
        with transaction(settings.database_url) as session:
            _, key = create_key(session, "campaigns", admin=True)
        with (
            api_process(settings, free_port(), tmp_path) as url,
            worker_process(settings, "w1", tmp_path, workspace=tmp_path / "host1"),
            worker_process(settings, "w2", tmp_path, workspace=tmp_path / "host2"),
        ):
            yield ApiClient(url, key), sim


def sql(url: str, query: str, **params: Any) -> list[Any]:
    with sa.create_engine(url, poolclass=sa.pool.NullPool).connect() as conn:
        return list(conn.execute(sa.text(query), params).all())


def requests_for(sim: MessagesSimulator, phase: str, model: str | None = None) -> int:
    found = [TASK.search(str(b.get("messages"))) for b in sim.bodies]
    return sum(
        1
        for m, b in zip(found, sim.bodies, strict=True)
        if m is not None and m.group(2) == phase and (model is None or b["model"] == model)
    )


def commit(repo: Path, message: str, files: dict[str, str] | None = None) -> None:
    for rel, text in (files or {}).items():
        (repo / rel).write_text(text)
        git("add", rel, cwd=repo)
    git(
        "-c",
        "user.name=T",
        "-c",
        "user.email=t@localhost",
        "commit",
        "--allow-empty",
        "-qm",
        message,
        cwd=repo,
    )


def lenient_branch(repo: Path) -> None:
    """A branch whose own check accepts any answer: replayed answers re-validated against new code."""
    git("checkout", "-qb", "lenient", cwd=repo)
    commit(repo, "lenient check", {"check.sh": LENIENT + "\n"})
    git("checkout", "-q", "main", cwd=repo)


def test_failed_phases_and_replay_campaigns_of_40_runs_rerun_only_what_they_should(
    fleet_settings: Settings, sample_repo: Path, tmp_path: Path
) -> None:
    commit(sample_repo, "strict check", {"check.sh": CHECK + "\n"})
    lenient_branch(sample_repo)
    url = fleet_settings.database_url
    with llm_fleet(fleet_settings, tmp_path, lambda i, model: model == SONNET) as (client, sim):
        specs = [task_spec(sample_repo, i) for i in range(40)]
        for spec in specs:
            spec["phases"][1]["validation"] = ["sh check.sh"]
        sources = [client.submit(spec)["id"] for spec in specs]
        wait_terminal(client, sources, timeout=180)
        before = len(sim.bodies)
        failed = client.create_campaign(
            {
                "source": {"run_ids": sources},
                "mode": "failed_phases",
                "overrides": {"config": {"models": {"builder": [SONNET]}}},
                "max_parallel_runs": 6,
            }
        )
        replay = client.create_campaign(
            {"source": {"run_ids": sources}, "mode": "replay", "overrides": {"base_ref": "lenient"}}
        )
        views = [wait_campaign(client, c["id"], timeout=240) for c in (failed, replay)]
        report = client.campaign_report(replay["id"])
    assert sql(url, "SELECT DISTINCT state, failure_kind FROM runs WHERE campaign_id IS NULL") == [
        ("DONE_FAILED", "MODEL")
    ]
    assert [v["children_by_state"] for v in views] == [{"DONE_SUCCESS": 40}] * 2
    # Seen by the simulator: after the sources, only the 40 failed phases were asked again (of the new
    # model); the reused `base` phases and every replayed answer cost no request at all.
    assert requests_for(sim, "base") == 40 and requests_for(sim, "solve", HAIKU) == 40
    assert len(sim.bodies) - before == requests_for(sim, "solve", SONNET) == 40
    _check_reused_commits(url, sample_repo, failed["id"])
    _check_parallelism(url, failed["id"], limit=6)
    assert sql(
        url,
        "SELECT count(*) FROM llm_usage_events u JOIN runs r ON r.id = u.run_id WHERE r.campaign_id = :c",
        c=replay["id"],
    ) == [(0,)]
    assert report["counts"]["valid"] == 40
    mc = report["success"]["mcnemar"]
    assert (mc["a_only"], mc["b_only"]) == (0, 40)
    assert mc["p_value"] == pytest.approx(binomtest(0, 40, 0.5).pvalue)


def _check_reused_commits(url: str, repo: Path, campaign_id: int) -> None:
    """Each child's `base` phase is the source's commit, not rebuilt; its branch has one commit per phase."""
    rows = sql(
        url,
        "SELECT c.id, c.base_sha, cp.commit_sha, sp.commit_sha, cp.attempts_used FROM runs c "
        "JOIN phases cp ON cp.run_id = c.id AND cp.index = 0 "
        "JOIN phases sp ON sp.run_id = c.parent_run_id AND sp.index = 0 WHERE c.campaign_id = :c",
        c=campaign_id,
    )
    assert len(rows) == 40
    for child, base, reused, source_commit, attempts in rows:
        assert reused == source_commit and attempts == 0
        log = git("rev-list", "--reverse", f"{base}..autopack/run-{child}", cwd=repo).split()
        assert len(log) == 2 and log[0] == source_commit
    attempts = sql(
        url,
        "SELECT p.index, count(a.id) FROM attempts a JOIN phases p ON p.id = a.phase_id "
        "JOIN runs r ON r.id = a.run_id WHERE r.campaign_id = :c GROUP BY p.index",
        c=campaign_id,
    )
    assert attempts == [(1, 40)]


def _check_parallelism(url: str, campaign_id: int, limit: int) -> None:
    """At no instant were more than `limit` children executing (from the phases' own timestamps)."""
    spans = sql(
        url,
        "SELECT p.started_at, p.finished_at FROM phases p JOIN runs r ON r.id = p.run_id "
        "WHERE r.campaign_id = :c AND p.index = 1",
        c=campaign_id,
    )
    events = sorted([(s, 1) for s, _ in spans] + [(f, -1) for _, f in spans], key=lambda e: (e[0], e[1]))
    live = peak = 0
    for _, step in events:
        live += step
        peak = max(peak, live)
    assert 2 <= peak <= limit


HAIKU_RIGHT = range(0, 24)
SONNET_RIGHT = range(8, 37)
OLD_BASE, OVERLOADED = 38, 39


def ab_decide(i: int, model: str) -> bool | None:
    if i == OVERLOADED and model == SONNET:
        return None  # overloaded until deliveries run out
    return i in (HAIKU_RIGHT if model == HAIKU else SONNET_RIGHT)


def test_ab_report_matches_an_independent_computation_and_excludes_invalid_and_infra_pairs(
    fleet_settings: Settings, sample_repo: Path, tmp_path: Path
) -> None:
    url = fleet_settings.database_url
    with llm_fleet(fleet_settings, tmp_path, ab_decide) as (client, sim):
        old_base = client.submit(task_spec(sample_repo, OLD_BASE, phases=1))["id"]  # main moves on after it
        commit(sample_repo, "main moves on")
        sources = [client.submit(task_spec(sample_repo, i, phases=1))["id"] for i in range(OLD_BASE)]
        sources += [client.submit(task_spec(sample_repo, OVERLOADED, phases=1))["id"], old_base]
        wait_terminal(client, sources, timeout=180)
        created = client.create_campaign(
            {
                "name": "haiku-vs-sonnet",
                "source": {"run_ids": sources},
                "overrides": {"config": {"models": {"builder": [SONNET]}}},
                "pin_base_sha": False,
            }
        )
        view = wait_campaign(client, created["id"], timeout=180)
        report = client.campaign_report(created["id"])
        markdown = client.campaign_report_text(created["id"], "md")
        svg = client.campaign_report_text(created["id"], "svg")
        child = sql(
            url,
            "SELECT id FROM runs WHERE campaign_id = :c AND parent_run_id = :p",
            c=created["id"],
            p=sources[0],
        )[0][0]
        metrics = client._call("GET", f"/runs/{child}/metrics")
        again = client.campaign_report(created["id"])
    # What the test knows in advance: valid tasks 0..37; A only 0..7 (b = 8), B only 24..36 (c = 13).
    valid = list(range(OLD_BASE))
    a = np.array([i in HAIKU_RIGHT for i in valid], dtype=float)
    b = np.array([i in SONNET_RIGHT for i in valid], dtype=float)
    table = [
        [int(((a == 1) & (b == 1)).sum()), int(((a == 1) & (b == 0)).sum())],
        [int(((a == 0) & (b == 1)).sum()), int(((a == 0) & (b == 0)).sum())],
    ]
    assert report["counts"] == {
        **report["counts"],
        "valid": 38,
        "invalid": 1,
        "infra_invalid": 1,
        "pending": 0,
    }
    mc = report["success"]["mcnemar"]
    assert (mc["a_only"], mc["b_only"]) == (8, 13)
    assert mc["p_value"] == pytest.approx(mcnemar(table, exact=True).pvalue)
    d = b - a
    se = d.std(ddof=1) / np.sqrt(len(d))
    assert report["success"]["delta"] == pytest.approx(d.mean())
    assert report["success"]["ci95"] == pytest.approx(
        [d.mean() - 1.959964 * se, d.mean() + 1.959964 * se], abs=1e-4
    )
    reasons = {e["kind"]: e["reason"] for e in report["excluded"]["pairs"]}
    assert "base commits differ" in reasons["invalid"]
    assert "infrastructure" in reasons["infra_invalid"] and "delivered" in reasons["infra_invalid"]
    # The overloaded provider really was asked again on each delivery, and never scored as a failure.
    assert requests_for(sim, "solve", SONNET) >= 38 + 2
    assert view["pairs_by_state"] == {"VALID": 38, "INVALID": 1, "INFRA_INVALID": 1}
    assert again == report  # persisted and reproducible
    assert "McNemar" in markdown and "<svg" in svg
    (item,) = metrics["ab_deltas"]["items"]
    assert (item["campaign_id"], item["side"], item["state"]) == (created["id"], "B", "VALID")
    _check_spend_adds_up(url, created["id"], report)


def _check_spend_adds_up(url: str, campaign_id: int, report: dict[str, Any]) -> None:
    """Campaign spend = Σ child run spend = Σ usage rows, exactly, and some was spent."""
    runs = sql(
        url, "SELECT sum(tokens_spent), sum(usd_spent) FROM runs WHERE campaign_id = :c", c=campaign_id
    )[0]
    usage = sql(
        url,
        "SELECT sum(u.input_tokens + u.output_tokens), sum(u.cost_usd) FROM llm_usage_events u "
        "JOIN runs r ON r.id = u.run_id WHERE r.campaign_id = :c",
        c=campaign_id,
    )[0]
    assert runs[0] == usage[0] and runs[0] >= 38 * 960
    assert runs[1] == usage[1] and str(runs[1]) == report["spend"]["usd_spent"]
    assert report["spend"]["tokens_spent"] == runs[0]


def test_the_campaign_cap_stops_new_calls_at_the_cap_and_cancels_the_children_still_held(
    fleet_settings: Settings, sample_repo: Path, tmp_path: Path
) -> None:
    url = fleet_settings.database_url
    cap = 5000
    with llm_fleet(fleet_settings, tmp_path, lambda i, model: True) as (client, sim):
        sources = [client.submit(task_spec(sample_repo, i, phases=1))["id"] for i in range(12)]
        wait_terminal(client, sources, timeout=120)
        before = requests_for(sim, "solve", SONNET)
        created = client.create_campaign(
            {
                "source": {"run_ids": sources},
                "overrides": {"config": {"models": {"builder": [SONNET]}, "max_output_tokens": 256}},
                "max_tokens": cap,
                "max_parallel_runs": 2,
            }
        )
        view = wait_campaign(client, created["id"], timeout=120)
        report = client.campaign_report(created["id"])
    asked = requests_for(sim, "solve", SONNET) - before
    spent = sql(
        url,
        "SELECT sum(tokens_spent), sum(tokens_reserved) FROM runs WHERE campaign_id = :c",
        c=created["id"],
    )[0]
    rows = sql(
        url,
        "SELECT count(*) FROM llm_usage_events u JOIN runs r ON r.id = u.run_id WHERE r.campaign_id = :c",
        c=created["id"],
    )[0]
    kinds = dict(
        sql(
            url,
            "SELECT coalesce(failure_kind, state), count(*) FROM runs WHERE campaign_id = :c GROUP BY 1",
            c=created["id"],
        )
    )
    # Each call spends 960 tokens and reserves more (its input estimate + 256), so the cap is never
    # passed, some calls were made, and the one the cap refused was never sent.
    assert 2 <= asked == rows[0] < 12
    assert spent == (asked * 960, 0) and spent[0] <= cap
    assert kinds.get("CAMPAIGN_CAP", 0) >= 1 and kinds.get("CANCELLED", 0) >= 1
    assert kinds.get("DONE_SUCCESS") == asked
    assert view["cap_reached"] and "tokens cap 5000" in view["cap_reached"]
    assert report["counts"]["invalid"] == 12 - asked and report["counts"]["valid"] == asked
    assert view["spend"]["tokens_spent"] == spent[0] and view["spend"]["max_tokens"] == cap
