"""`GET /fleet`, `GET /metrics` and `autopack fleet` on real Postgres and Redis (and one real worker)."""

from __future__ import annotations

import json
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import sqlalchemy as sa
from click.testing import CliRunner
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from api import cli
from api.app import create_app
from api.sample_repo import sample_spec
from api.serve import api_in_thread
from shared.settings import Settings
from tests.conftest import SESSION_DB, SESSION_QUEUE
from tests.support.procs import worker_process
from workers.celery_app import create_app as create_celery


def sql(url: str, statement: str, **params: Any) -> None:
    with sa.create_engine(url, poolclass=sa.pool.NullPool).begin() as conn:
        conn.execute(sa.text(statement), params)


def submit(client: TestClient, repo: Path, n: int) -> list[dict[str, Any]]:
    runs = []
    for i in range(n):
        resp = client.post("/runs", json=sample_spec(repo, i))
        assert resp.status_code == 201, resp.text
        runs.append(resp.json())
    return runs


def metrics(client: TestClient) -> dict[str, Any]:
    """{sample name + sorted labels: value} of a /metrics scrape."""
    resp = client.get("/metrics", headers={"X-API-Key": ""})
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    out: dict[str, Any] = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            assert set(s.labels) <= {"state", "le"}, f"{s.name} carries {s.labels}: aggregates only"
            out[s.name + json.dumps(s.labels, sort_keys=True)] = s.value
    return out


def key(name: str, **labels: str) -> str:
    return name + json.dumps(labels, sort_keys=True)


def test_queued_runs_without_a_worker_are_waiting_and_counted_in_the_redis_queue(
    client: TestClient, sample_repo: Path, redis_url: str
) -> None:
    runs = submit(client, sample_repo, 2)
    resp = client.get("/fleet")
    assert resp.status_code == 200, resp.text
    view = resp.json()
    llen = redis.Redis.from_url(redis_url).llen(SESSION_QUEUE)
    assert view["queue"] == SESSION_QUEUE
    assert view["queue_length"] == llen == 2
    assert view["mode"] == "fleet"
    assert view["workers"] == [] and view["workers_error"] is None
    assert [w["run_id"] for w in view["waiting"]] == [r["id"] for r in runs]
    assert all(w["phase_index"] == 0 and w["dispatched_seconds_ago"] < 5 for w in view["waiting"])
    assert view["stuck"] == [] and view["executing"] == [] and view["redeliveries"] == []


def test_fleet_needs_an_api_key_but_metrics_do_not(fleet_settings: Settings) -> None:
    app = create_app(fleet_settings, create_celery(fleet_settings))
    with TestClient(app) as anonymous:
        assert anonymous.get("/fleet").status_code == 401
        assert anonymous.get("/metrics").status_code == 200


def test_expired_lease_and_undispatched_or_stale_phases_are_stuck_and_redeliveries_counted(
    client: TestClient, sample_repo: Path, fleet_settings: Settings
) -> None:
    expired, live, never, stale, fresh = (r["id"] for r in submit(client, sample_repo, 5))
    url, now = fleet_settings.database_url, datetime.now(UTC)
    for run_id, lease_expires in ((expired, now - timedelta(seconds=5)), (live, now + timedelta(seconds=8))):
        sql(
            url,
            "UPDATE runs SET state='RUNNING', lease_owner=:owner, lease_expires_at=:exp, lease_epoch=3"
            " WHERE id=:id",
            owner=f"w{run_id}@host",
            exp=lease_expires,
            id=run_id,
        )
        sql(
            url,
            "UPDATE phases SET state='EXECUTING', started_at=:start, deliveries=3"
            " WHERE run_id=:id AND index=0",
            start=now - timedelta(seconds=120),
            id=run_id,
        )
    sql(url, "UPDATE phases SET dispatched_at=NULL WHERE run_id=:id", id=never)
    sql(url, "UPDATE phases SET dispatched_at=:t WHERE run_id=:id", t=now - timedelta(seconds=60), id=stale)

    view = client.get("/fleet").json()

    executing = {e["run_id"]: e for e in view["executing"]}
    assert set(executing) == {expired, live}
    assert executing[expired]["lease_live"] is False and executing[expired]["lease_expires_in_seconds"] < 0
    assert executing[live]["lease_live"] is True and executing[live]["lease_owner"] == f"w{live}@host"
    assert 119 <= executing[live]["lease_age_seconds"] < 150
    stuck = {s["run_id"]: s["reason"] for s in view["stuck"]}
    assert set(stuck) == {expired, never, stale}
    assert "expired lease" in stuck[expired] and f"w{expired}@host" in stuck[expired]
    assert "never dispatched" in stuck[never]
    assert "dispatched over 5s ago" in stuck[stale]
    assert [w["run_id"] for w in view["waiting"]] == [fresh]
    redelivered = {d["run_id"]: d["deliveries"] for d in view["redeliveries"]}
    assert redelivered == {expired: 3, live: 3}


def test_metrics_report_state_counts_queue_durations_takeovers_and_infra_retries(
    client: TestClient, sample_repo: Path, fleet_settings: Settings
) -> None:
    done, running, _queued = (r["id"] for r in submit(client, sample_repo, 3))
    url, t0 = fleet_settings.database_url, datetime(2025, 1, 1, tzinfo=UTC)
    sql(url, "UPDATE runs SET state='DONE_SUCCESS' WHERE id=:id", id=done)
    for index, seconds in enumerate((3, 40, 700)):  # buckets: <=5, <=60, <=1200
        sql(
            url,
            "UPDATE phases SET state='COMPLETE', started_at=:s, finished_at=:f, deliveries=:d"
            " WHERE run_id=:id AND index=:i",
            s=t0,
            f=t0 + timedelta(seconds=seconds),
            d=2 if index == 2 else 1,
            id=done,
            i=index,
        )
    sql(url, "UPDATE runs SET state='RUNNING' WHERE id=:id", id=running)
    sql(url, "UPDATE phases SET state='EXECUTING', deliveries=4 WHERE run_id=:id AND index=0", id=running)
    phase = f"(SELECT id FROM phases WHERE run_id={done} AND index=0)"
    for number, failures in ((1, [{"kind": "429"}, {"kind": "529"}]), (2, [{"kind": "connection"}]), (3, [])):
        sql(
            url,
            "INSERT INTO attempts (run_id, phase_id, number, worker, lease_epoch, started_at, finished_at,"
            " outcome, changed_paths, infra_failures)"
            f" VALUES (:run, {phase}, :n, 'w@h', 1, :t, :t, 'SUCCESS', '[]', :inf)",
            run=done,
            n=number,
            t=t0,
            inf=json.dumps(failures),
        )

    from shared.hosts import report
    from shared.states import HostState

    report(url, "sick@a", HostState.SICK, reason="git worktree add failed", faults=3)
    report(url, "well@b", HostState.HEALTHY)
    report(url, "well@c", HostState.HEALTHY)

    m = metrics(client)

    assert m[key("autopack_hosts", state="SICK")] == 1
    assert m[key("autopack_hosts", state="HEALTHY")] == 2
    assert m[key("autopack_runs", state="DONE_SUCCESS")] == 1
    assert m[key("autopack_runs", state="RUNNING")] == 1
    assert m[key("autopack_runs", state="QUEUED")] == 1
    assert m[key("autopack_runs", state="CANCELLED")] == 0
    assert m[key("autopack_phases", state="COMPLETE")] == 3
    assert m[key("autopack_phases", state="EXECUTING")] == 1
    assert m[key("autopack_phases", state="QUEUED")] == 5
    assert m[key("autopack_queue_length")] == 3  # one message per submitted run, nobody consumed them
    h = "autopack_phase_duration_seconds"
    assert m[key(h + "_bucket", le="1.0")] == 0
    assert m[key(h + "_bucket", le="5.0")] == 1
    assert m[key(h + "_bucket", le="60.0")] == 2
    assert m[key(h + "_bucket", le="600.0")] == 2
    assert m[key(h + "_bucket", le="1200.0")] == 3
    assert m[key(h + "_bucket", le="+Inf")] == m[key(h + "_count")] == 3
    assert m[key(h + "_sum")] == pytest.approx(743)
    assert m[key("autopack_lease_takeovers_total")] == 1 + 3
    assert m[key("autopack_llm_infra_retries_total")] == 3


def test_each_app_has_its_own_metrics_registry(fleet_settings: Settings) -> None:
    apps = [create_app(fleet_settings, create_celery(fleet_settings)) for _ in range(2)]
    for app in apps:
        with TestClient(app) as c:
            assert "autopack_phases" in c.get("/metrics").text


def test_embedded_mode_reports_the_in_process_pool_and_metrics_work_on_sqlite(
    embedded_settings: Settings, sample_repo: Path
) -> None:
    app = create_app(embedded_settings, create_celery(embedded_settings))  # pool threads not started
    with TestClient(app) as c:
        run = c.post("/runs", json=sample_spec(sample_repo, 0)).json()
        sql(
            embedded_settings.database_url,
            "UPDATE phases SET state='COMPLETE', started_at=:s, finished_at=:f"
            " WHERE run_id=:id AND `index`=0",
            s=datetime(2025, 1, 1, tzinfo=UTC),
            f=datetime(2025, 1, 1, 0, 0, 30, tzinfo=UTC),
            id=run["id"],
        )
        view = c.get("/fleet").json()
        m = metrics(c)
    assert view["mode"] == "embedded"
    (pool,) = view["workers"]
    assert pool["name"] == "embedded (in-process)" and pool["pool"] == "threads" and pool["alive"] is False
    assert view["queue_length"] == 1
    assert m[key("autopack_phase_duration_seconds_bucket", le="15.0")] == 0
    assert m[key("autopack_phase_duration_seconds_bucket", le="30.0")] == 1
    assert m[key("autopack_phase_duration_seconds_sum")] == pytest.approx(30, abs=0.01)


@pytest.mark.fleet
def test_a_real_worker_answers_inspect_and_is_listed_with_its_pool(
    client: TestClient, fleet_settings: Settings, tmp_path: Path
) -> None:
    with worker_process(fleet_settings, "fleetview", tmp_path, concurrency=1) as proc:
        view = client.get("/fleet").json()
        proc.stop(signal.SIGKILL)  # idle: nothing to shut down gracefully, and the suite stays fast
    assert view["workers_error"] is None
    (worker,) = view["workers"]
    assert worker["name"].startswith("fleetview@")
    assert worker["alive"] is True and worker["pool"] == "prefork" and worker["concurrency"] == 1
    assert worker["active"] == []


def test_cli_fleet_prints_queue_stuck_runs_and_redeliveries(
    fleet_settings: Settings,
    api_key: str,
    sample_repo: Path,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    celery = create_celery(fleet_settings)
    with api_in_thread(fleet_settings, celery) as url:
        settings = fleet_settings.model_copy(update={"api_url": url, "api_key": SecretStr(api_key)})
        monkeypatch.setattr(cli, "get_settings", lambda: settings)
        headers = {"X-API-Key": api_key}
        run_id = httpx.post(f"{url}/runs", json=sample_spec(sample_repo, 0), headers=headers).json()["id"]
        deadline = time.monotonic() + 10  # the API enqueues after answering: let that land first
        while redis.Redis.from_url(redis_url).llen(SESSION_QUEUE) < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        sql(
            fleet_settings.database_url,
            "UPDATE phases SET dispatched_at=NULL, deliveries=2 WHERE run_id=:id AND index=0",
            id=run_id,
        )
        result = CliRunner().invoke(cli.cli, ["fleet"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "workers: 0" in out
    assert f"queue {SESSION_QUEUE}: 1 message(s)" in out
    assert "stuck: 1" in out and f"run {run_id} QUEUED" in out and "never dispatched" in out
    assert "redelivered phases: 1" in out and "delivered 2x" in out


def test_the_fleet_view_survives_the_broker_closing_its_pooled_connections(
    client: TestClient, redis_url: str
) -> None:
    assert client.get("/fleet").json()["workers_error"] is None  # the control connection is pooled now
    # What a Redis restart does to every client; only this session's database's, so a test session
    # running beside this one (make test runs two) keeps its connections.
    admin = redis.Redis.from_url(redis_url)
    me = admin.client_id()
    ours = [c for c in admin.client_list(_type="normal") if c["db"] == str(SESSION_DB) and c["id"] != str(me)]
    killed = sum(admin.client_kill_filter(_id=c["id"]) for c in ours)
    assert killed >= 1

    view = client.get("/fleet").json()

    assert view["workers_error"] is None and view["workers"] == []
