"""Fixtures on real services: a fresh Postgres database and a Redis database per test session, real git
repos."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
import redis
import sqlalchemy as sa
from fastapi.testclient import TestClient

from api.app import create_app
from api.sample_repo import make_sample_repo
from shared.db import transaction, upgrade
from shared.keys import create_key
from shared.models import Base
from shared.settings import Settings
from workers.celery_app import create_app as create_celery

PG_ADMIN = os.environ.get("AUTOPACK_TEST_PG_ADMIN", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
_HELD: list[IO[str]] = []


def session_redis() -> str:
    """A Redis database of this test session's own: `AUTOPACK_TEST_REDIS`, or the highest of 1..15
    whose lock file no other session holds. Two suites on one machine (a developer's and CI's, or two
    clones) then never flush each other's queue or answer each other's Celery broadcasts."""
    explicit = os.environ.get("AUTOPACK_TEST_REDIS")
    if explicit:
        return explicit
    for db in range(15, 0, -1):
        handle = open(Path(tempfile.gettempdir()) / f"autopack-test-redis-{db}.lock", "w")  # noqa: SIM115
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        _HELD.append(handle)  # held until this process exits
        return f"redis://127.0.0.1:6379/{db}"
    raise RuntimeError("every Redis test database 1..15 is in use; set AUTOPACK_TEST_REDIS")


REDIS_URL = session_redis()
SESSION_DB = int(found.group(1)) if (found := re.search(r"/(\d+)/?$", REDIS_URL)) else 0
"""This session's Redis database number: its netns subnet derives from it (tests/support/netns.py)."""
SESSION_QUEUE = f"autopack-test{SESSION_DB}"
"""This session's Celery queue: its Redis database is its own already, and so are its queue's name and
the Celery broadcasts about it, whatever database another suite was told to use."""
PYTHON = sys.executable
TEMP_REPOS = f"{Path(tempfile.gettempdir()).resolve()}/**"
"""The tests' repositories live in temp dirs; a fleet allows none until told."""


def _admin() -> sa.Engine:
    return sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)


def create_database(name: str) -> str:
    with _admin().connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    return PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"


def drop_database(name: str) -> None:
    with _admin().connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A migrated Postgres database of this test session's own."""
    name = f"autopack_test_{os.getpid()}"
    url = create_database(name)
    upgrade(url)
    yield url
    from shared.db import engine_for

    engine_for(url).dispose()
    drop_database(name)


@pytest.fixture
def pg(pg_url: str) -> str:
    """The session database, emptied before the test."""
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with sa.create_engine(pg_url, poolclass=sa.pool.NullPool).begin() as conn:
        conn.execute(sa.text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    return pg_url


@pytest.fixture
def redis_url() -> str:
    """This session's Redis database, flushed before the test."""
    redis.Redis.from_url(REDIS_URL).flushdb()
    return REDIS_URL


@pytest.fixture
def sample_repo(tmp_path: Path) -> Path:
    return make_sample_repo(tmp_path / "origin")


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied per test (migrating each test's database costs ~0.5 s)."""
    path = tmp_path_factory.mktemp("template") / "autopack.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    """A migrated SQLite database of this test's own."""
    shutil.copyfile(sqlite_template, tmp_path / "autopack.db")
    return f"sqlite:///{tmp_path}/autopack.db"


@pytest.fixture(params=["postgres", "sqlite"])
def db_url(request: pytest.FixtureRequest) -> str:
    """The same test on Postgres and on SQLite."""
    url: str = request.getfixturevalue("pg" if request.param == "postgres" else "sqlite_url")
    return url


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sample repository shared by a module whose tests only resolve its base ref."""
    return make_sample_repo(tmp_path_factory.mktemp("repo") / "origin")


@pytest.fixture
def embedded_settings(sqlite_url: str, tmp_path: Path) -> Settings:
    url = sqlite_url
    return Settings(
        database_url=url,
        broker_url="memory://",
        workspace_dir=tmp_path / "workspace",
        worker_concurrency=4,
        lease_heartbeat_seconds=1,
        reconcile_interval_seconds=1,
        log_level="WARNING",
        _env_file=None,  # type: ignore[call-arg]
    )


@pytest.fixture
def fleet_settings(pg: str, redis_url: str, tmp_path: Path) -> Settings:
    return Settings(
        database_url=pg,
        broker_url=redis_url,
        workspace_dir=tmp_path / "workspace",
        worker_concurrency=2,
        lease_ttl_seconds=10,
        lease_heartbeat_seconds=1,
        reconcile_interval_seconds=1,
        redispatch_after_seconds=5,
        queue_name=SESSION_QUEUE,
        auth_required=True,
        allowed_repos=[TEMP_REPOS],
        log_level="WARNING",
        _env_file=None,  # type: ignore[call-arg]
    )


@pytest.fixture
def api_key(fleet_settings: Settings) -> str:
    """The operator's key: admin, so it sees every run and /fleet (tests/test_keys.py covers owners)."""
    with transaction(fleet_settings.database_url) as session:
        _, plain = create_key(session, "tests", admin=True)
    return plain


@pytest.fixture
def client(fleet_settings: Settings, api_key: str) -> Iterator[TestClient]:
    """The API on real Postgres and Redis, with no worker consuming, authenticated."""
    app = create_app(fleet_settings, create_celery(fleet_settings))
    with TestClient(app, headers={"X-API-Key": api_key}) as c:
        yield c


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Let fixtures see whether their test failed (the browser fixture saves a screenshot then)."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{report.when}", report)
