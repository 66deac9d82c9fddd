"""API keys: owners, admin keys, `autopack keys list|revoke`, and keys kept out of logs and rows."""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from fastapi.testclient import TestClient

from api.app import create_app
from api.sample_repo import sample_spec
from shared.db import alembic_config, engine_for, transaction
from shared.keys import Caller, VerifiedKeys, create_key, revoke_key
from shared.settings import Settings
from tests.conftest import create_database, drop_database
from tests.support.procs import AUTOPACK, settings_env
from workers.celery_app import create_app as create_celery


def new_key(settings: Settings, name: str, admin: bool = False) -> str:
    with transaction(settings.database_url) as session:
        _, plain = create_key(session, name, admin=admin)
    return plain


@pytest.fixture
def anonymous(fleet_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(fleet_settings, create_celery(fleet_settings))) as c:
        yield c


def as_key(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


def test_another_owners_run_is_404_everywhere_but_an_admin_sees_it(
    anonymous: TestClient, fleet_settings: Settings, sample_repo: Path
) -> None:
    alice, bob = new_key(fleet_settings, "alice"), new_key(fleet_settings, "bob")
    admin = new_key(fleet_settings, "ops", admin=True)
    run = anonymous.post("/runs", json=sample_spec(sample_repo, 0), headers=as_key(alice)).json()
    path = f"/runs/{run['id']}"
    assert anonymous.get(path, headers=as_key(bob)).status_code == 404
    assert anonymous.get(f"{path}/metrics", headers=as_key(bob)).status_code == 404
    assert anonymous.get(f"{path}/attempts", headers=as_key(bob)).status_code == 404
    assert anonymous.post(f"{path}/cancel", headers=as_key(bob)).status_code == 404
    assert anonymous.get("/runs", headers=as_key(bob)).json()["items"] == []
    assert anonymous.get(path, headers=as_key(alice)).json()["state"] == "QUEUED"  # bob's cancel did nothing
    assert [r["id"] for r in anonymous.get("/runs", headers=as_key(alice)).json()["items"]] == [run["id"]]
    assert anonymous.get(path, headers=as_key(admin)).status_code == 200
    assert anonymous.get(f"{path}/metrics", headers=as_key(admin)).status_code == 200
    assert anonymous.get(f"{path}/attempts", headers=as_key(alice)).json() == []  # none recorded yet


def test_keys_with_the_same_owner_share_its_runs(
    anonymous: TestClient, fleet_settings: Settings, sample_repo: Path
) -> None:
    with transaction(fleet_settings.database_url) as session:
        _, laptop = create_key(session, "ada-laptop", owner="ada")
        _, ci = create_key(session, "ada-ci", owner="ada")
    run = anonymous.post("/runs", json=sample_spec(sample_repo, 0), headers=as_key(laptop)).json()
    assert anonymous.get(f"/runs/{run['id']}", headers=as_key(ci)).status_code == 200


def test_the_fleet_view_needs_an_admin_key(anonymous: TestClient, fleet_settings: Settings) -> None:
    user, admin = new_key(fleet_settings, "user"), new_key(fleet_settings, "ops", admin=True)
    assert anonymous.get("/fleet", headers=as_key(user)).status_code == 403
    assert anonymous.get("/fleet", headers=as_key(admin)).status_code == 200


def test_without_the_key_cache_a_revoked_key_is_401_on_its_very_next_request(
    fleet_settings: Settings,
) -> None:
    settings = fleet_settings.model_copy(update={"api_key_cache_seconds": 0})
    with TestClient(create_app(settings, create_celery(settings))) as api:
        key = new_key(settings, "leaver")
        assert api.get("/runs", headers=as_key(key)).status_code == 200
        with transaction(settings.database_url) as session:
            assert revoke_key(session, "leaver") == 1
        resp = api.get("/runs", headers=as_key(key))
        assert resp.status_code == 401 and "invalid" in resp.json()["detail"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_revoked_key_is_401_once_its_verification_is_older_than_the_cache_ttl(
    anonymous: TestClient, fleet_settings: Settings
) -> None:
    clock = Clock()
    ttl = fleet_settings.api_key_cache_seconds
    assert ttl > 0
    anonymous.app.state.verified_keys = VerifiedKeys(ttl, clock=clock)  # type: ignore[attr-defined]
    key = new_key(fleet_settings, "leaver")
    assert anonymous.get("/runs", headers=as_key(key)).status_code == 200
    with transaction(fleet_settings.database_url) as session:
        assert revoke_key(session, "leaver") == 1
    clock.now += ttl * 0.9
    assert anonymous.get("/runs", headers=as_key(key)).status_code == 200  # the trade-off, bounded by ttl
    clock.now += ttl * 0.1
    resp = anonymous.get("/runs", headers=as_key(key))
    assert resp.status_code == 401 and "invalid" in resp.json()["detail"]
    assert anonymous.get("/runs", headers=as_key(key)).status_code == 401  # a refusal is not kept


def test_the_key_cache_keeps_digests_only_is_bounded_and_forgets_nothing_it_was_not_told() -> None:
    clock = Clock()
    keys = VerifiedKeys(2.0, size=3, clock=clock)
    callers = [Caller(owner=f"o{i}", admin=False, key_id=i) for i in range(4)]
    for i, caller in enumerate(callers):
        keys.put(f"apk_secret{i}", caller)
    assert keys.get("apk_secret0") is None  # the oldest made room
    assert [keys.get(f"apk_secret{i}") for i in (1, 2, 3)] == callers[1:]
    assert keys.get("apk_other") is None
    assert not any("apk_secret" in digest for digest in keys._entries)
    clock.now += 2.0
    assert keys.get("apk_secret3") is None
    off = VerifiedKeys(0, clock=clock)
    off.put("apk_secret1", callers[1])
    assert off.get("apk_secret1") is None


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [AUTOPACK, "keys", *args], env=settings_env(settings), capture_output=True, text=True, timeout=60
    )


def test_keys_cli_creates_lists_and_revokes_without_ever_printing_a_stored_secret(
    fleet_settings: Settings,
) -> None:
    created = cli(fleet_settings, "create", "carol", "--owner", "team-a", "--admin")
    assert created.returncode == 0, created.stderr
    plain = created.stdout.strip()
    listed = cli(fleet_settings, "list")
    assert listed.returncode == 0, listed.stderr
    row = next(line.split() for line in listed.stdout.splitlines() if line.split()[1:2] == ["carol"])
    assert row[2:5] == ["team-a", "yes", plain[:10]] and row[-1] == "-"
    assert plain not in listed.stdout
    with transaction(fleet_settings.database_url) as session:
        digest = session.execute(sa.text("SELECT key_hash FROM api_keys WHERE name = 'carol'")).scalar_one()
    assert digest not in listed.stdout
    revoked = cli(fleet_settings, "revoke", "carol")
    assert revoked.returncode == 0 and "revoked 1" in revoked.stdout
    again = cli(fleet_settings, "revoke", "carol")
    assert again.returncode == 1 and "no live key named 'carol'" in again.stderr
    after = [line.split() for line in cli(fleet_settings, "list").stdout.splitlines()]
    carol = [cells for cells in after if cells[1:2] == ["carol"]]
    assert len(carol) == 1 and carol[0][-1] != "-"  # still listed, now with when it was revoked


def test_keys_never_appear_in_logs_or_in_any_row(
    anonymous: TestClient,
    fleet_settings: Settings,
    sample_repo: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    key = new_key(fleet_settings, "secretive")
    caplog.set_level(logging.DEBUG)
    spec = sample_spec(sample_repo, 0)
    assert anonymous.post("/runs", json=spec, headers=as_key(key)).status_code == 201
    anonymous.get("/runs", headers=as_key(key + "x"))  # a near miss is logged nowhere either
    anonymous.post("/runs", json=spec | {"repo": "/etc"}, headers=as_key(key))
    assert caplog.records, "nothing was logged: the check would prove nothing"
    assert key not in caplog.text
    tables = sa.inspect(engine_for(fleet_settings.database_url)).get_table_names()
    with sa.create_engine(fleet_settings.database_url, poolclass=sa.pool.NullPool).connect() as conn:
        dump = "".join(
            str(row) for table in tables for row in conn.execute(sa.text(f'SELECT t::text FROM "{table}" t'))
        )
    assert "secretive" in dump  # the dump covers api_keys
    assert key not in dump and key[10:] not in dump


@pytest.fixture(params=["postgres", "sqlite"])
def empty_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no schema at all, on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/keys.db"
        return
    name = f"autopack_keys_migration_{os.getpid()}"
    url = create_database(name)
    yield url
    engine_for(url).dispose()
    drop_database(name)


def test_the_migration_makes_each_existing_key_its_own_owner_and_not_admin_and_reverts(empty_db: str) -> None:
    command.upgrade(alembic_config(empty_db), "0003")
    with sa.create_engine(empty_db, poolclass=sa.pool.NullPool).begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO api_keys (name, prefix, key_hash, created_at) "
                "VALUES ('old-ci', 'apk_abcdef', :h, CURRENT_TIMESTAMP)"
            ),
            {"h": "0" * 64},
        )
    command.upgrade(alembic_config(empty_db), "head")
    with sa.create_engine(empty_db, poolclass=sa.pool.NullPool).connect() as conn:
        row = conn.execute(sa.text("SELECT owner, admin FROM api_keys")).one()
    assert (row.owner, bool(row.admin)) == ("old-ci", False)
    command.downgrade(alembic_config(empty_db), "0003")  # and back, keeping the key
    with sa.create_engine(empty_db, poolclass=sa.pool.NullPool).connect() as conn:
        assert conn.execute(sa.text("SELECT name FROM api_keys")).scalar_one() == "old-ci"
        columns = {c["name"] for c in sa.inspect(conn).get_columns("runs")}
    assert "owner" not in columns
