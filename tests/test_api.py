"""The HTTP contract on real Postgres and Redis, with no worker consuming (runs stay QUEUED)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from api.app import create_app
from api.sample_repo import sample_spec
from shared.settings import Settings
from workers.celery_app import create_app as create_celery


def run_count(url: str) -> int:
    with sa.create_engine(url, poolclass=sa.pool.NullPool).connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM runs")).scalar_one())


def test_submit_returns_201_with_resolved_base_sha_and_queued_phases(
    client: TestClient, sample_repo: Path
) -> None:
    resp = client.post("/runs", json=sample_spec(sample_repo, 0))
    assert resp.status_code == 201, resp.text
    run = resp.json()
    head = (sample_repo / ".git" / "refs" / "heads" / "main").read_text().strip()
    assert run["base_sha"] == head
    assert run["state"] == "QUEUED"
    assert run["result_branch"] == f"autopack/run-{run['id']}"
    assert [p["state"] for p in run["phases"]] == ["QUEUED"] * 3
    assert all(isinstance(p["id"], int) for p in run["phases"])
    assert resp.headers["content-type"] == "application/json"
    # The route writes its body itself (no response validation): it must be what a read answers.
    read = client.get(f"/runs/{run['id']}").json()
    assert [p["attempt_log"] for p in read["phases"]] == [[]] * 3  # a read lists attempts; a submit has none
    assert run == {**read, "phases": [{**p, "attempt_log": None} for p in read["phases"]]}


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda s: s.pop("phases"), "phases"),
        (lambda s: s["phases"][0].update(scope=[]), "scope"),
        (lambda s: s["phases"][0].update(scope=["../outside"]), "scope"),
        (lambda s: s["phases"][0].update(deliverables=["/etc/passwd"]), "deliverables"),
        (lambda s: s["phases"][0].update(protected_paths=[".git/config"]), "protected_paths"),
        (lambda s: s["config"].update(max_attempts=0), "max_attempts"),
        (lambda s: s["config"].update(buidler="script"), "buidler"),
        (lambda s: s["phases"][1].pop("command"), "command"),
    ],
)
def test_invalid_spec_is_422_naming_the_field_and_stores_nothing(
    client: TestClient, sample_repo: Path, fleet_settings: Settings, mutate: Any, field: str
) -> None:
    spec = sample_spec(sample_repo, 0)
    mutate(spec)
    resp = client.post("/runs", json=spec)
    assert resp.status_code == 422
    assert field in resp.text
    assert run_count(fleet_settings.database_url) == 0


def test_unreadable_repo_is_422_on_repo(client: TestClient, tmp_path: Path, fleet_settings: Settings) -> None:
    spec = sample_spec(tmp_path / "no-such-repo", 0)
    resp = client.post("/runs", json=spec)
    assert resp.status_code == 422
    assert resp.json()["detail"][0]["loc"] == ["body", "repo"]
    assert run_count(fleet_settings.database_url) == 0


def test_a_folder_inside_a_repository_is_422_on_repo_naming_the_repository(
    client: TestClient, sample_repo: Path, fleet_settings: Settings
) -> None:
    spec = sample_spec(sample_repo / "src", 0)  # workers could never clone it: the run would never start
    resp = client.post("/runs", json=spec)
    assert resp.status_code == 422
    detail = resp.json()["detail"][0]
    assert detail["loc"] == ["body", "repo"] and str(sample_repo) in detail["msg"]
    assert run_count(fleet_settings.database_url) == 0


def test_ref_that_does_not_resolve_is_422_on_base_ref(
    client: TestClient, sample_repo: Path, fleet_settings: Settings
) -> None:
    spec = sample_spec(sample_repo, 0) | {"base_ref": "no-such-branch"}
    resp = client.post("/runs", json=spec)
    assert resp.status_code == 422
    assert resp.json()["detail"][0]["loc"] == ["body", "base_ref"]
    assert "no-such-branch" in resp.json()["detail"][0]["msg"]
    assert run_count(fleet_settings.database_url) == 0


def test_unknown_run_is_404(client: TestClient) -> None:
    assert client.get("/runs/999999").status_code == 404
    assert client.post("/runs/999999/cancel").status_code == 404


def test_missing_or_wrong_api_key_is_401_and_health_needs_none(fleet_settings: Settings) -> None:
    app = create_app(fleet_settings, create_celery(fleet_settings))
    with TestClient(app) as anonymous:
        missing = anonymous.get("/runs")
        wrong = anonymous.get("/runs", headers={"X-API-Key": "apk_wrong"})
        health = anonymous.get("/health")
    assert missing.status_code == 401 and "missing" in missing.json()["detail"]
    assert wrong.status_code == 401 and "invalid" in wrong.json()["detail"]
    assert health.status_code == 200
    assert health.json()["database"] == "ok" and health.json()["broker"] == "ok"


def test_api_keys_are_stored_hashed(fleet_settings: Settings, api_key: str) -> None:
    with sa.create_engine(fleet_settings.database_url, poolclass=sa.pool.NullPool).connect() as conn:
        stored = conn.execute(sa.text("SELECT key_hash, prefix FROM api_keys")).one()
    assert api_key not in stored.key_hash
    assert len(stored.key_hash) == 64
    assert api_key.startswith(stored.prefix)


def test_cancel_of_a_queued_run_cancels_it_and_its_phases(client: TestClient, sample_repo: Path) -> None:
    run = client.post("/runs", json=sample_spec(sample_repo, 0)).json()
    resp = client.post(f"/runs/{run['id']}/cancel")
    assert resp.status_code == 200
    body = client.get(f"/runs/{run['id']}").json()
    assert body["state"] == "CANCELLED"
    assert [p["state"] for p in body["phases"]] == ["CANCELLED"] * 3
    again = client.post(f"/runs/{run['id']}/cancel")
    assert again.json()["state"] == "CANCELLED"


def test_list_runs_paginates_newest_first_and_filters_by_state(client: TestClient, sample_repo: Path) -> None:
    ids = [client.post("/runs", json=sample_spec(sample_repo, i)).json()["id"] for i in range(5)]
    client.post(f"/runs/{ids[0]}/cancel")
    first = client.get("/runs", params={"limit": 2}).json()
    second = client.get("/runs", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    third = client.get("/runs", params={"limit": 2, "cursor": second["next_cursor"]}).json()
    seen = [r["id"] for page in (first, second, third) for r in page["items"]]
    assert seen == sorted(ids, reverse=True)
    assert third["next_cursor"] is None
    cancelled = client.get("/runs", params={"state": "CANCELLED"}).json()["items"]
    assert [r["id"] for r in cancelled] == [ids[0]]
    assert client.get("/runs", params={"state": "BOGUS"}).status_code == 422


def test_health_is_503_naming_the_broker_when_redis_is_unreachable(fleet_settings: Settings) -> None:
    dead = fleet_settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    app = create_app(dead, create_celery(dead))
    with TestClient(app) as c:
        resp = c.get("/health")
    assert resp.status_code == 503
    assert resp.json()["database"] == "ok"
    assert resp.json()["broker"].startswith("down")


def test_submit_with_broker_down_stores_the_run_for_the_reconciler(
    fleet_settings: Settings, api_key: str, sample_repo: Path
) -> None:
    dead = fleet_settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    app = create_app(dead, create_celery(dead))
    with TestClient(app, headers={"X-API-Key": api_key}) as c:
        resp = c.post("/runs", json=sample_spec(sample_repo, 0))
    assert resp.status_code == 201
    with sa.create_engine(fleet_settings.database_url, poolclass=sa.pool.NullPool).connect() as conn:
        pending = conn.execute(sa.text("SELECT dispatched_at FROM phases WHERE index = 0")).scalar_one()
    assert pending is None  # the outbox entry waits for the reconciler


def test_openapi_docs_are_served(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/runs", "/runs/{run_id}", "/runs/{run_id}/cancel", "/health"} <= set(paths)


def llm_spec(repo: Path, **config: Any) -> dict[str, Any]:
    spec = sample_spec(repo, 0)
    spec["config"] = {"builder": "anthropic", **config}
    return spec


def refusal(resp: Any) -> str:
    """The one validation message of a 422 on `config`."""
    assert resp.status_code == 422, resp.text
    (detail,) = resp.json()["detail"]
    assert detail["loc"] == ["body", "config"]
    return str(detail["msg"])


def test_unknown_model_is_422_naming_the_field_and_stores_nothing(
    client: TestClient, sample_repo: Path, fleet_settings: Settings
) -> None:
    models = {"builder": ["claude-haiku-4-5", "claude-hiaku-4-5"], "doctor": "claude-sonnet-4-6"}
    msg = refusal(client.post("/runs", json=llm_spec(sample_repo, models=models)))
    assert "models.builder.1" in msg and "'claude-hiaku-4-5'" in msg and "unknown model" in msg
    msg = refusal(client.post("/runs", json=llm_spec(sample_repo, models={"doctor": "gpt-4o"})))
    assert "models.doctor" in msg and "'gpt-4o'" in msg
    assert run_count(fleet_settings.database_url) == 0


def test_max_output_tokens_above_a_builder_models_limit_is_422_naming_both(
    client: TestClient, sample_repo: Path, fleet_settings: Settings
) -> None:
    models = {"builder": ["claude-haiku-4-5", "claude-3-5-haiku"]}  # 64000 and 8192 output tokens
    msg = refusal(client.post("/runs", json=llm_spec(sample_repo, models=models, max_output_tokens=10000)))
    assert "max_output_tokens" in msg and "8192" in msg and "models.builder.1" in msg
    assert run_count(fleet_settings.database_url) == 0
    ok = client.post("/runs", json=llm_spec(sample_repo, models=models, max_output_tokens=8192))
    assert ok.status_code == 201, ok.text


def test_model_without_a_known_price_is_422_under_a_usd_cap_and_accepted_without_one(
    client: TestClient, sample_repo: Path, fleet_settings: Settings
) -> None:
    # A new version of a known family: its output limit is known, its price is not.
    models = {"builder": ["claude-sonnet-4-9"], "doctor": "claude-sonnet-4-6"}
    msg = refusal(client.post("/runs", json=llm_spec(sample_repo, models=models, max_usd=1.0)))
    assert "models.builder.0" in msg and "no known price" in msg and "max_usd" in msg
    assert run_count(fleet_settings.database_url) == 0
    capped_by_tokens = llm_spec(sample_repo, models=models, max_tokens=100000)
    assert client.post("/runs", json=capped_by_tokens).status_code == 201
