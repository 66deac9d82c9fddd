"""Engine, sessions and migrations. One engine per process, built from `Settings`."""

from __future__ import annotations

import os
import select
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, Insert, Table, create_engine, event, literal_column, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from shared.errors import DatabaseNotMigrated, ServiceUnavailable

MIGRATIONS = Path(__file__).parent / "migrations"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _ensure_sqlite_dir(url: str) -> None:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)


IDLE_PING_SECONDS = 10.0
"""A pooled connection idle longer than this is pinged on checkout (see `_liveness`)."""

IDLE_IN_TRANSACTION_MS = 30_000
"""How long Postgres lets a session sit idle inside a transaction before ending it (see make_engine)."""


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        _ensure_sqlite_dir(url)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # A holder frozen mid-transaction (SIGSTOP, a partition) must not pin the run row forever:
    # Postgres ends such a session, and a waiter gives up instead of queueing behind it.
    options = f"-c lock_timeout=15000 -c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS}"
    engine = create_engine(url, pool_size=5, max_overflow=10, connect_args={"options": options})
    _liveness(engine)
    event.listen(engine, "do_connect", _name_connection)
    return engine


_application_name: str | None = None


def name_connections(name: str) -> None:
    """Name every Postgres connection this process (and its forked children) opens from now on
    `<name>/<pid>`: the `application_name` Postgres shows for it (`pg_stat_activity`, logs)."""
    global _application_name
    _application_name = name


def _name_connection(_dialect: Any, _record: Any, _cargs: Any, cparams: dict[str, Any]) -> None:
    if _application_name is not None:
        cparams["application_name"] = f"{_application_name}/{os.getpid()}"[:63]


def _liveness(engine: Engine) -> None:
    """Instead of `pool_pre_ping` (a SELECT 1 round trip on every checkout, 7 of them per no-op phase):
    ping only a connection that sat idle over IDLE_PING_SECONDS, or whose socket is readable.

    Between transactions the server has nothing to say to an idle connection; when Postgres restarts
    or kills the backend it sends a FATAL notice and closes the socket, so the socket turns readable
    and costs no round trip to notice. Readable (or a long idle, where a silent partition may hide)
    gets the real ping, and a failed ping raises DisconnectionError, on which the pool drops the
    connection and checks out (or opens) another: a dead connection never reaches a phase's write."""

    def connected(_dbapi_conn: Any, record: Any) -> None:
        record.info["used_at"] = time.monotonic()

    def checked_in(_dbapi_conn: Any, record: Any) -> None:
        record.info["used_at"] = time.monotonic()

    def checked_out(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        idle = time.monotonic() - record.info.get("used_at", 0.0)
        if idle <= IDLE_PING_SECONDS and not _readable(dbapi_conn):
            return
        try:
            engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:
            raise DisconnectionError(f"pooled connection is dead: {exc}") from exc

    event.listen(engine, "connect", connected)
    event.listen(engine, "checkin", checked_in)
    event.listen(engine, "checkout", checked_out)


def _readable(dbapi_conn: Any) -> bool:
    """True when the server sent something (a termination notice, EOF) to a connection between
    transactions; psycopg's socket is non-blocking, so this is a zero-timeout poll, no round trip."""
    try:
        fd = dbapi_conn.pgconn.socket
    except Exception:  # closed, or not psycopg: let the ping decide
        return True
    readable, _, _ = select.select([fd], [], [], 0)
    return bool(readable)


@lru_cache(maxsize=8)
def engine_for(url: str) -> Engine:
    _seen_urls.add(url)
    return make_engine(url)


def session_factory(url: str) -> sessionmaker[Session]:
    return _sessionmaker(engine_for(url))


@lru_cache(maxsize=8)
def _sessionmaker(engine: Engine) -> sessionmaker[Session]:
    # Each sessionmaker defines a Session subclass, whose first session then builds the class's event
    # dispatch: ~0.1 ms of CPU per transaction when made per call.
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(url: str) -> Iterator[Session]:
    """A session whose work commits on success and rolls back on any error."""
    with session_factory(url)() as session, session.begin():
        yield session


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    _ensure_sqlite_dir(url)
    command.upgrade(alembic_config(url), revision)


def schema_status(url: str) -> tuple[str | None, str]:
    """(revision the database is at, revision the code expects)."""
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    assert head is not None
    try:
        with engine_for(url).connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
    except SQLAlchemyError as exc:
        raise ServiceUnavailable("database", _describe(exc)) from exc
    return current, head


def require_migrated(url: str) -> None:
    current, head = schema_status(url)
    if current != head:
        raise DatabaseNotMigrated(
            f"database schema is at {current or 'nothing'}, code expects {head}: "
            "run `autopack db upgrade` first"
        )


def ping(url: str) -> None:
    try:
        with engine_for(url).connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        raise ServiceUnavailable("database", _describe(exc)) from exc


def _describe(exc: SQLAlchemyError) -> str:
    """The driver's first line, without the SQL or parameters (which may hold secrets)."""
    orig = getattr(exc, "orig", None)
    return str(orig or exc).strip().splitlines()[0][:300]


def after_fork() -> None:
    """In a forked child: drop the parent's pooled connections without closing them under the parent."""
    for engine in _engines():
        engine.dispose(close=False)


def _engines() -> list[Engine]:
    # lru_cache keeps no public view of its values; re-derive them from the URLs it saw.
    return [engine_for(url) for url in _seen_urls]


_seen_urls: set[str] = set()


def insert_unless_present(
    session: Session, model: type[DeclarativeBase], values: dict[str, Any], keys: list[str]
) -> bool:
    """INSERT ... ON CONFLICT (keys) DO NOTHING, on Postgres and SQLite; True when this one inserted.
    A Core insert of the model's table (`values` name its columns): the ORM-enabled form went through
    the bulk-persistence layer, ~0.5 ms of Python for an attempt's 20-odd columns, for nothing it needs.
    The values travel as the execution's parameters of a statement built once (`insert_ignoring`)."""
    table = model.__table__
    assert isinstance(table, Table)
    stmt = insert_ignoring(session.get_bind().dialect.name, table, tuple(keys))
    return session.execute(stmt, values).first() is not None


@lru_cache(maxsize=64)
def insert_ignoring(dialect: str, table: Table, keys: tuple[str, ...]) -> Insert:
    """`INSERT INTO table ... ON CONFLICT (keys) DO NOTHING RETURNING 1`, columns named by the
    parameters it is executed with. Built once: constructing and cache-keying a statement per call
    cost ~0.2 ms of Python per statement, a few milliseconds a phase (bench (m)). RETURNING, because
    rowcount says -1 there."""
    if dialect == "postgresql":
        pg = pg_insert(table).on_conflict_do_nothing(index_elements=list(keys))
        return pg.returning(literal_column("1"))
    if dialect == "sqlite":
        lite = sqlite_insert(table).on_conflict_do_nothing(index_elements=list(keys))
        return lite.returning(literal_column("1"))
    raise NotImplementedError(f"insert_unless_present supports postgresql and sqlite, not {dialect}")
