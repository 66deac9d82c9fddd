"""Campaign creation, release, caps, cancel and pair judging on real Postgres (no worker consuming).

Source runs are submitted through the API and then ended in the database as a worker would leave
them; tests/test_campaign_fleet.py runs campaigns end to end with real workers."""

from __future__ import annotations

import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from api.sample_repo import sample_spec
from shared.budget import reserve
from shared.campaigns.caps import CampaignBudgetExceeded, CampaignCaps, campaign_ledger, reserve_campaign
from shared.campaigns.flow import release
from shared.campaigns.judge import judge_pending
from shared.db import transaction
from shared.models import Campaign, CampaignPair, Run
from shared.settings import Settings
from shared.states import FailureKind, PairState, PhaseState, RunState


def submit(client: TestClient, repo: Path, n: int) -> list[int]:
    ids = []
    for i in range(n):
        resp = client.post("/runs", json=sample_spec(repo, i))
        assert resp.status_code == 201, resp.text
        ids.append(resp.json()["id"])
    return ids


def end_run(
    url: str, run_id: int, state: RunState, *, failed_at: int = 1, kind: FailureKind | None = None
) -> None:
    """End a QUEUED run as a worker would: phases before `failed_at` complete (at the base commit, so
    their 'result' is reachable), that one FAILED, the rest SKIPPED."""
    with transaction(url) as session:
        run = session.get(Run, run_id)
        assert run is not None
        for phase in run.phases:
            if state == RunState.DONE_SUCCESS or phase.index < failed_at:
                phase.state, phase.commit_sha = PhaseState.COMPLETE, run.base_sha
            elif phase.index == failed_at:
                phase.state, phase.attempts_used = PhaseState.FAILED, 2
            else:
                phase.state = PhaseState.SKIPPED
        run.state = state
        if state == RunState.DONE_FAILED:
            run.failure_kind = kind or FailureKind.MODEL
            run.failure_reason = "phase failed"
        run.branch_sha = run.head_sha


def rows(url: str, query: str, **params: Any) -> list[Any]:
    with sa.create_engine(url, poolclass=sa.pool.NullPool).connect() as conn:
        return list(conn.execute(sa.text(query), params).all())


def test_a_campaign_makes_one_child_and_one_pair_per_source_and_holds_what_exceeds_max_parallel(
    client: TestClient, sample_repo: Path, fleet_settings: Settings
) -> None:
    url = fleet_settings.database_url
    sources = submit(client, sample_repo, 5)
    for run_id in sources:
        end_run(url, run_id, RunState.DONE_FAILED)
    body = {
        "name": "haiku-vs-sonnet",
        "source": {"run_ids": sources},
        "overrides": {"config": {"max_attempts": 3}},
        "max_parallel_runs": 2,
    }
    resp = client.post("/campaigns", json=body)
    assert resp.status_code == 201, resp.text
    created = resp.json()
    assert (created["children"], created["dispatched"], created["skipped_sources"]) == (5, 2, [])
    children = rows(
        url,
        "SELECT parent_run_id, arm, held, config, base_sha, state FROM runs"
        " WHERE campaign_id = :c ORDER BY id",
        c=created["id"],
    )
    assert [c.parent_run_id for c in children] == sources
    assert {c.arm for c in children} == {"B"}
    assert [c.held for c in children] == [False, False, True, True, True]
    assert all(c.config["max_attempts"] == 3 and c.state == "QUEUED" for c in children)
    pairs = rows(url, "SELECT a_run_id, state FROM campaign_pairs WHERE campaign_id = :c", c=created["id"])
    assert sorted(p.a_run_id for p in pairs) == sources and {p.state for p in pairs} == {"PENDING"}
    view = client.get(f"/campaigns/{created['id']}").json()
    assert view["children"] == 5 and view["held"] == 3 and view["children_by_state"] == {"QUEUED": 5}


def test_failed_phases_children_reuse_the_sources_completed_commits_and_start_at_the_failed_phase(
    client: TestClient, sample_repo: Path, fleet_settings: Settings
) -> None:
    url = fleet_settings.database_url
    failed, succeeded = submit(client, sample_repo, 2)
    end_run(url, failed, RunState.DONE_FAILED, failed_at=1)
    end_run(url, succeeded, RunState.DONE_SUCCESS)
    resp = client.post(
        "/campaigns", json={"source": {"run_ids": [failed, succeeded]}, "mode": "failed_phases"}
    )
    assert resp.status_code == 201, resp.text
    created = resp.json()
    assert created["children"] == 1
    assert created["skipped_sources"] == [
        {"run_id": succeeded, "reason": "nothing to re-run: every phase completed"}
    ]
    phases = rows(
        url,
        "SELECT p.index, p.state, p.commit_sha, r.head_sha FROM phases p JOIN runs r ON r.id = p.run_id "
        "WHERE r.campaign_id = :c ORDER BY p.index",
        c=created["id"],
    )
    source_phase0 = rows(url, "SELECT commit_sha FROM phases WHERE run_id = :r AND index = 0", r=failed)[0][0]
    assert [(p.index, p.state) for p in phases] == [(0, "COMPLETE"), (1, "QUEUED"), (2, "QUEUED")]
    assert phases[0].commit_sha == source_phase0 and phases[0].head_sha == source_phase0


def test_sources_that_cannot_be_rerun_are_left_out_with_their_reason(
    client: TestClient, sample_repo: Path, fleet_settings: Settings
) -> None:
    running, ended = submit(client, sample_repo, 2)
    end_run(fleet_settings.database_url, ended, RunState.DONE_FAILED)
    created = client.post("/campaigns", json={"source": {"run_ids": [running, ended]}}).json()
    assert created["children"] == 1
    assert created["skipped_sources"][0]["run_id"] == running
    assert "still QUEUED" in created["skipped_sources"][0]["reason"]
    # Nothing eligible at all is an error naming the field, and stores nothing.
    resp = client.post("/campaigns", json={"source": {"run_ids": [running]}})
    assert resp.status_code == 422 and "source" in resp.text and "still QUEUED" in resp.text


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"source": {"run_ids": [999999]}}, "run_ids"),
        ({"source": {}}, "source"),
        ({"source": {"run_ids": [1], "filter": {}}}, "source"),
        ({"source": {"run_ids": [1]}, "overrides": {"config": {"max_atempts": 3}}}, "max_atempts"),
        ({"source": {"run_ids": [1]}, "overrides": {"config": {"models": {"builder": ["gpt-9"]}}}}, "gpt-9"),
        ({"source": {"run_ids": [1]}, "overrides": {"base_ref": "no-such-branch"}}, "base_ref"),
        ({"source": {"run_ids": [1]}, "repeats": 0}, "repeats"),
        ({"source": {"run_ids": [1]}, "mode": "sometimes"}, "mode"),
    ],
)
def test_invalid_campaign_is_422_naming_the_field_and_stores_nothing(
    client: TestClient, sample_repo: Path, fleet_settings: Settings, body: dict[str, Any], field: str
) -> None:
    (source,) = submit(client, sample_repo, 1)
    end_run(fleet_settings.database_url, source, RunState.DONE_FAILED)
    assert source == 1
    resp = client.post("/campaigns", json=body)
    assert resp.status_code == 422, resp.text
    assert field in resp.text
    assert rows(fleet_settings.database_url, "SELECT count(*) FROM campaigns")[0][0] == 0
    assert rows(fleet_settings.database_url, "SELECT count(*) FROM runs")[0][0] == 1


def test_a_filter_takes_the_matching_ended_runs_of_the_repo(
    client: TestClient, sample_repo: Path, fleet_settings: Settings
) -> None:
    ids = submit(client, sample_repo, 4)  # names sample-0-hello, sample-1-..., ...
    for run_id in ids[:3]:
        end_run(fleet_settings.database_url, run_id, RunState.DONE_FAILED)
    flt = {"states": ["DONE_FAILED"], "repo": str(sample_repo.resolve()), "name_prefix": "sample-"}
    created = client.post("/campaigns", json={"source": {"filter": flt}}).json()
    parents = rows(
        fleet_settings.database_url, "SELECT parent_run_id FROM runs WHERE campaign_id = :c", c=created["id"]
    )
    assert sorted(p[0] for p in parents) == ids[:3]
    flt["name_prefix"] = "sample-1"
    created = client.post("/campaigns", json={"source": {"filter": flt}}).json()
    assert created["children"] == 1


def test_arms_and_repeats_make_control_and_treatment_children_per_sample(
    client: TestClient, sample_repo: Path, fleet_settings: Settings
) -> None:
    sources = submit(client, sample_repo, 2)
    for run_id in sources:
        end_run(fleet_settings.database_url, run_id, RunState.DONE_FAILED)
    body = {
        "source": {"run_ids": sources},
        "arms": {"control": {}, "treatment": {"config": {"max_attempts": 4}}},
        "repeats": 3,
    }
    created = client.post("/campaigns", json=body).json()
    assert created["children"] == 2 * 2 * 3
    pairs = rows(
        fleet_settings.database_url,
        "SELECT a.arm, b.arm, b.config, a.sample, b.sample FROM campaign_pairs p "
        "JOIN runs a ON a.id = p.a_run_id JOIN runs b ON b.id = p.b_run_id WHERE p.campaign_id = :c",
        c=created["id"],
    )
    assert len(pairs) == 6
    assert all(p[0] == "control" and p[1] == "treatment" and p[2]["max_attempts"] == 4 for p in pairs)
    assert sorted(p[3] for p in pairs) == [0, 0, 1, 1, 2, 2] and all(p[3] == p[4] for p in pairs)


def test_release_keeps_at_most_max_parallel_children_live(
    client: TestClient, sample_repo: Path, fleet_settings: Settings
) -> None:
    url = fleet_settings.database_url
    sources = submit(client, sample_repo, 6)
    for run_id in sources:
        end_run(url, run_id, RunState.DONE_FAILED)
    created = client.post("/campaigns", json={"source": {"run_ids": sources}, "max_parallel_runs": 2}).json()
    with transaction(url) as session:
        assert release(session, created["id"]) == []  # two live already: no room
    live = [
        r[0] for r in rows(url, "SELECT id FROM runs WHERE campaign_id = :c AND NOT held", c=created["id"])
    ]
    assert len(live) == 2
    end_run(url, live[0], RunState.DONE_SUCCESS)
    with transaction(url) as session:
        released = release(session, created["id"])
    assert len(released) == 1
    with transaction(url) as session:
        assert release(session, created["id"]) == []  # a racing second call finds no room
    live_now = rows(
        url,
        "SELECT count(*) FROM runs WHERE campaign_id = :c AND NOT held AND state = 'QUEUED'",
        c=created["id"],
    )
    assert live_now[0][0] == 2


def test_concurrent_children_never_reserve_past_the_campaign_cap(
    client: TestClient, sample_repo: Path, fleet_settings: Settings
) -> None:
    url = fleet_settings.database_url
    sources = submit(client, sample_repo, 8)
    for run_id in sources:
        end_run(url, run_id, RunState.DONE_FAILED)
    created = client.post("/campaigns", json={"source": {"run_ids": sources}, "max_tokens": 10_000}).json()
    children = [r[0] for r in rows(url, "SELECT id FROM runs WHERE campaign_id = :c", c=created["id"])]
    caps = CampaignCaps(created["id"], 10_000, None)
    granted: list[int] = []
    refused: list[int] = []

    def child(run_id: int) -> None:
        for _ in range(10):
            try:
                with transaction(url) as session:
                    reserve_campaign(session, caps, run_id, tokens=300, usd=Decimal(0))
                    reserve(session, run_id, tokens=300, usd=Decimal(0), max_tokens=None, max_usd=None)
                granted.append(run_id)
            except CampaignBudgetExceeded:
                refused.append(run_id)

    threads = [threading.Thread(target=child, args=(run_id,)) for run_id in children]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with transaction(url) as session:
        ledger = campaign_ledger(session, created["id"])
    # 80 requests of 300 against 10,000: exactly 33 fit, and the database holds exactly those.
    assert len(granted) == 33 and len(refused) == 80 - 33
    assert ledger.tokens_reserved == 33 * 300 <= 10_000


def test_cancel_ends_unstarted_children_now_and_flags_a_leased_one(
    client: TestClient, sample_repo: Path, fleet_settings: Settings
) -> None:
    url = fleet_settings.database_url
    sources = submit(client, sample_repo, 4)
    for run_id in sources:
        end_run(url, run_id, RunState.DONE_FAILED)
    created = client.post("/campaigns", json={"source": {"run_ids": sources}, "max_parallel_runs": 2}).json()
    leased = rows(url, "SELECT id FROM runs WHERE campaign_id = :c ORDER BY id LIMIT 1", c=created["id"])[0][
        0
    ]
    with transaction(url) as session:
        run = session.get(Run, leased)
        assert run is not None
        run.lease_owner, run.lease_expires_at = "w1", sa.func.now() + sa.text("interval '1 minute'")
    view = client.post(f"/campaigns/{created['id']}/cancel").json()
    assert view["state"] == "CANCELLED"
    assert view["children_by_state"] == {"CANCELLED": 3, "QUEUED": 1}
    flagged = rows(url, "SELECT cancel_requested, state FROM runs WHERE id = :r", r=leased)[0]
    assert flagged == (True, "QUEUED")
    assert client.post(f"/campaigns/{created['id']}/cancel").status_code == 200  # twice is harmless


def test_pairs_are_judged_invalid_for_another_base_and_infra_invalid_for_a_fleet_failure(
    client: TestClient, sample_repo: Path, fleet_settings: Settings
) -> None:
    url = fleet_settings.database_url
    same, moved, infra, model = submit(client, sample_repo, 4)
    for run_id in (same, moved, model):
        end_run(url, run_id, RunState.DONE_FAILED)
    end_run(url, infra, RunState.DONE_FAILED, kind=FailureKind.INFRA)
    with transaction(url) as session:
        run = session.get(Run, moved)
        assert run is not None
        run.base_sha = "0" * 40  # its base commit is not the one its child will start from
    body = {"source": {"run_ids": [same, moved, infra, model]}, "pin_base_sha": False}
    created = client.post("/campaigns", json=body).json()
    children = rows(url, "SELECT id, parent_run_id FROM runs WHERE campaign_id = :c", c=created["id"])
    for child, parent in children:
        end_run(url, child, RunState.DONE_SUCCESS if parent != model else RunState.DONE_FAILED)
    with transaction(url) as session:
        campaign = session.get(Campaign, created["id"])
        assert campaign is not None
        assert judge_pending(session, campaign) == 4
        judged = {p.source_run_id: p for p in session.scalars(sa.select(CampaignPair))}
        assert judged[same].state == judged[model].state == PairState.VALID
        assert judged[infra].state == PairState.INFRA_INVALID and "infrastructure" in (
            judged[infra].reason or ""
        )
        assert judged[moved].state == PairState.INVALID and "base commits differ" in (
            judged[moved].reason or ""
        )
        assert judged[same].outcome is not None and judged[same].outcome["b"]["success"] is True
