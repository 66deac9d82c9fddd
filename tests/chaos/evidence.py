"""Evidence the database keeps about the workers' writes, from outside them: test-only triggers (no
migration) on the batch's own database.

- `chaos_refusals`: every fenced UPDATE of `runs` (its WHERE names `lease_epoch`) that matched no row,
  with the writer's `application_name` (`<worker>/<pid>`, shared/db.py). The worker rolls back after a
  refusal, so the trigger writes through `dblink`, in a transaction of its own that survives that.
- `chaos_writes`: every committed change of a `runs`, `phases` or `attempts` row, with the writer's
  name and transaction, and for `runs` the lease owner, epoch and token ledger before and after.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.engine import make_url

from tests.chaos.config import Db

_TABLES = """
CREATE EXTENSION IF NOT EXISTS dblink;
CREATE TABLE chaos_refusals (id bigserial PRIMARY KEY, at timestamptz NOT NULL, app text, query text);
CREATE TABLE chaos_writes (
    id bigserial PRIMARY KEY, at timestamptz NOT NULL, xid bigint, app text, tbl text, run_id int,
    old_owner text, new_owner text, old_epoch int, new_epoch int,
    old_spent bigint, new_spent bigint, old_reserved bigint, new_reserved bigint
);
"""

_REFUSED = """
CREATE FUNCTION chaos_refused() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM n) AND current_query() LIKE '%lease_epoch = %' THEN
    PERFORM dblink_exec(CONNINFO, format(
      'INSERT INTO chaos_refusals (at, app, query) VALUES (%L, %L, %L)',
      clock_timestamp(), current_setting('application_name'), current_query()));
  END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER chaos_refused AFTER UPDATE ON runs REFERENCING NEW TABLE AS n
  FOR EACH STATEMENT EXECUTE FUNCTION chaos_refused();
"""

_WRITES = """
CREATE FUNCTION chaos_run_written() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO chaos_writes (at, xid, app, tbl, run_id, old_owner, new_owner, old_epoch, new_epoch,
                            old_spent, new_spent, old_reserved, new_reserved)
  VALUES (clock_timestamp(), txid_current(), current_setting('application_name'), 'runs', NEW.id,
          OLD.lease_owner, NEW.lease_owner, OLD.lease_epoch, NEW.lease_epoch,
          OLD.tokens_spent, NEW.tokens_spent, OLD.tokens_reserved, NEW.tokens_reserved);
  RETURN NULL;
END $$;
CREATE TRIGGER chaos_run_written AFTER UPDATE ON runs FOR EACH ROW EXECUTE FUNCTION chaos_run_written();
CREATE FUNCTION chaos_row_written() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO chaos_writes (at, xid, app, tbl, run_id)
  VALUES (clock_timestamp(), txid_current(), current_setting('application_name'), TG_TABLE_NAME, NEW.run_id);
  RETURN NULL;
END $$;
CREATE TRIGGER chaos_phase_written AFTER INSERT OR UPDATE ON phases
  FOR EACH ROW EXECUTE FUNCTION chaos_row_written();
CREATE TRIGGER chaos_attempt_written AFTER INSERT OR UPDATE ON attempts
  FOR EACH ROW EXECUTE FUNCTION chaos_row_written();
"""


def conninfo(url: str) -> str:
    u = make_url(url)
    return f"host={u.host or '127.0.0.1'} port={u.port or 5432} user={u.username} dbname={u.database}"


_DROP = """
DROP TRIGGER IF EXISTS chaos_refused ON runs;
DROP TRIGGER IF EXISTS chaos_run_written ON runs;
DROP TRIGGER IF EXISTS chaos_phase_written ON phases;
DROP TRIGGER IF EXISTS chaos_attempt_written ON attempts;
DROP FUNCTION IF EXISTS chaos_refused(), chaos_run_written(), chaos_row_written();
DROP TABLE IF EXISTS chaos_refusals, chaos_writes;
"""


@contextmanager
def installed(url: str) -> Iterator[None]:
    """The triggers and their tables for a batch and its checks; dropped afterwards, so the tests
    that share the session's database neither pay for them nor see extra tables."""
    _execute(url, _DROP)  # a batch killed before its cleanup left them
    install(url)
    try:
        yield
    finally:
        _execute(url, _DROP)


def _execute(url: str, sql: str) -> None:
    raw = Db(url).engine.raw_connection()
    try:
        raw.cursor().execute(sql)
        raw.commit()
    finally:
        raw.close()


def install(url: str) -> None:
    db = Db(url)
    refused = _REFUSED.replace("CONNINFO", "'" + conninfo(url).replace("'", "''") + "'")
    raw = db.engine.raw_connection()
    try:
        cur = raw.cursor()
        for sql in (_TABLES, refused, _WRITES):
            cur.execute(sql)  # no parameters: psycopg sends the statements as they are
        raw.commit()
    finally:
        raw.close()
