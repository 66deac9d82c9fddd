"""The dashboard bench's generated history, at a small size: counts, keys that hold, the same rows for the
same seed, sequences that continue after it, and the API reading it."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from api.app import create_app
from shared.db import engine_for, transaction, upgrade
from shared.keys import create_key
from shared.settings import Settings
from tests.bench.dashboard_data import GeneratedData, campaign_pairs_per_campaign, generate
from tests.conftest import create_database, drop_database
from workers.celery_app import create_app as create_celery

RUNS, ATTEMPTS, USAGE = 1_000, 4_000, 8_000
CHECKSUM = """
SELECT md5(string_agg(concat_ws('|', r.id, r.state, r.owner, r.created_at, r.tokens_spent,
                                 (SELECT sum(a.id * a.number) FROM attempts a WHERE a.run_id = r.id),
                                 (SELECT sum(e.input_tokens) FROM llm_usage_events e WHERE e.run_id = r.id)),
                      ',' ORDER BY r.id))
FROM runs r WHERE r.id % 37 = 0
"""


def _fresh(name: str) -> str:
    url = create_database(name)
    upgrade(url)
    return url


@pytest.fixture(scope="module")
def generated() -> Iterator[tuple[str, GeneratedData]]:
    name = f"autopack_test_dash_{os.getpid()}"
    url = _fresh(name)
    data = generate(url, runs=RUNS, attempts=ATTEMPTS, usage=USAGE, seed=7, say=lambda _: None)
    yield url, data
    engine_for(url).dispose()
    drop_database(name)


def _scalar(url: str, sql: str) -> object:
    with sa.create_engine(url, poolclass=sa.pool.NullPool).connect() as conn:
        return conn.execute(sa.text(sql)).scalar_one()


def test_counts(generated: tuple[str, GeneratedData]) -> None:
    url, data = generated
    assert (data.runs, data.attempts, data.usage_events) == (RUNS, ATTEMPTS, USAGE)
    assert RUNS <= data.phases <= 4 * RUNS
    assert data.campaigns == 20
    assert data.campaign_pairs == 20 * campaign_pairs_per_campaign(RUNS)
    assert data.heavy_run_attempts >= 20
    assert _scalar(url, "SELECT count(DISTINCT owner) FROM runs") == 2
    assert _scalar(url, "SELECT count(*) FROM campaign_pairs WHERE state = 'VALID'") > 0
    assert _scalar(url, "SELECT count(DISTINCT call_key) FROM llm_usage_events") == USAGE


@pytest.mark.parametrize(
    "orphans",
    [
        "SELECT count(*) FROM attempts a JOIN phases p ON p.id = a.phase_id WHERE p.run_id <> a.run_id",
        "SELECT count(*) FROM attempts a LEFT JOIN phases p ON p.id = a.phase_id WHERE p.id IS NULL",
        "SELECT count(*) FROM phases p LEFT JOIN runs r ON r.id = p.run_id WHERE r.id IS NULL",
        "SELECT count(*) FROM llm_usage_events e JOIN phases p ON p.id = e.phase_id"
        " WHERE p.run_id <> e.run_id",
        "SELECT count(*) FROM llm_usage_events e LEFT JOIN attempts a"
        " ON a.phase_id = e.phase_id AND a.number = e.attempt_number WHERE a.id IS NULL",
        "SELECT count(*) FROM campaign_pairs c JOIN runs b ON b.id = c.b_run_id"
        " WHERE b.campaign_id IS DISTINCT FROM c.campaign_id OR b.parent_run_id <> c.source_run_id",
        "SELECT count(*) FROM phases p WHERE p.attempts_used <> (SELECT count(*) FROM attempts a"
        " WHERE a.phase_id = p.id)",
        "SELECT count(*) FROM runs r WHERE json_array_length(r.spec->'phases')"
        " <> (SELECT count(*) FROM phases p WHERE p.run_id = r.id)",
    ],
)
def test_keys_hold(generated: tuple[str, GeneratedData], orphans: str) -> None:
    assert _scalar(generated[0], orphans) == 0


def test_same_seed_same_rows(generated: tuple[str, GeneratedData]) -> None:
    url, _ = generated
    name = f"autopack_test_dash2_{os.getpid()}"
    again = _fresh(name)
    try:
        generate(again, runs=RUNS, attempts=ATTEMPTS, usage=USAGE, seed=7, say=lambda _: None)
        assert _scalar(url, CHECKSUM) == _scalar(again, CHECKSUM)
        other = _fresh(name)
        generate(other, runs=RUNS, attempts=ATTEMPTS, usage=USAGE, seed=8, say=lambda _: None)
        assert _scalar(url, CHECKSUM) != _scalar(other, CHECKSUM)
    finally:
        engine_for(again).dispose()
        drop_database(name)


def test_the_api_reads_it_and_inserts_continue(generated: tuple[str, GeneratedData]) -> None:
    url, data = generated
    settings = Settings(
        database_url=url, broker_url="redis://127.0.0.1:6379/11", auth_required=True, _env_file=None
    )
    with transaction(url) as session:
        _, key = create_key(session, "test-dashboard", admin=True)
    app = create_app(settings, create_celery(settings))
    with TestClient(app, headers={"X-API-Key": key}) as client:
        first = client.get("/runs", params={"limit": 50}).json()
        assert [r["id"] for r in first["items"]] == list(range(RUNS, RUNS - 50, -1))
        deep = client.get("/runs", params={"limit": 50, "cursor": data.page_cursor}).json()
        assert deep["items"][0]["id"] == data.page_cursor - 1
        metrics = client.get(f"/runs/{data.heavy_run_id}/metrics").json()
        assert metrics["spent"]["run"]["calls"] == len(metrics["spent"]["calls"]) > 0
        run = client.get(f"/runs/{data.heavy_run_id}").json()
        assert sum(len(p["attempt_log"]) for p in run["phases"]) == data.heavy_run_attempts
        assert client.get(f"/campaigns/{data.campaign_id}/report").status_code == 200
    with sa.create_engine(url, poolclass=sa.pool.NullPool).begin() as conn:  # setval: ids continue
        new_id = conn.execute(
            sa.text(
                "INSERT INTO campaigns (name, spec, mode, state, seed, skipped, created_at)"
                " VALUES ('x', '{}', 'rerun', 'DONE', 1, '[]', now()) RETURNING id"
            )
        ).scalar_one()
    assert new_id == data.campaigns + 1
