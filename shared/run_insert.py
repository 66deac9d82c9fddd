"""Writing a new run and its phases: the rows `create_run` stores, and the values it hands back.

Every column is written from a value known here, given or the column's Python default evaluated as the
unit of work would, so the caller has the rows as stored without reading them back (`POST /runs`
answers from them).

On Postgres it is one statement: the run's INSERT is a CTE whose id the phases' INSERT reads, the
phases coming from the dumped spec's JSON array. One round trip instead of two, and none for BEGIN and
COMMIT either when the connection is in autocommit (`runs.submit`), which one statement makes safe: it
is atomic on its own. SQLite has no data-modifying CTE; there it is two INSERTs, the phases' in one
executemany."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Insert, Table, bindparam, case, column, func, insert, select, true
from sqlalchemy.dialects.postgresql import JSON
from sqlalchemy.sql.schema import CallableColumnDefault, ScalarElementColumnDefault

from shared.models import Phase, Run


@dataclass(frozen=True)
class StoredRun:
    """A run as `create_run` stored it: every column's value as written, and its phases' in index order."""

    values: dict[str, Any]
    phase_values: list[dict[str, Any]]

    @property
    def id(self) -> int:
        return int(self.values["id"])

    @property
    def phase_ids(self) -> list[int]:
        return [int(p["id"]) for p in self.phase_values]


_RUNS, _PHASES = Run.metadata.tables[Run.__tablename__], Phase.metadata.tables[Phase.__tablename__]
_PER_PHASE = ("id", "run_id", "index", "name", "spec", "dispatched_at")
"""A phase's columns written per phase (or known only once the rows exist); every other column is the
same for all of a run's phases: its default."""


def _defaults(table: Table) -> dict[str, Any]:
    """Every column's value when none is given: its Python default, evaluated now, or NULL."""
    values: dict[str, Any] = {}
    for c in table.c:
        if isinstance(c.default, ScalarElementColumnDefault):
            values[c.key] = c.default.arg
        elif isinstance(c.default, CallableColumnDefault):
            # SQLAlchemy wraps a no-argument callable to take a context; ours read none.
            values[c.key] = c.default.arg(None)  # type: ignore[arg-type]
        elif c.default is not None or c.server_default is not None:
            raise TypeError(f"{table.name}.{c.key}: a default this module cannot evaluate in Python")
        else:
            values[c.key] = None
    return values


def insert_run(
    conn: Connection,
    run: dict[str, Any],
    phase_specs: list[dict[str, Any]],
    first_dispatched_at: datetime | None,
) -> StoredRun:
    """Store `run` (columns over their defaults) and a phase per dumped phase spec, in order, every
    other phase column at its default; only the first phase may be claimed (`first_dispatched_at`)."""
    values = _defaults(_RUNS) | run
    del values["id"]
    same = {k: v for k, v in _defaults(_PHASES).items() if k not in _PER_PHASE}
    rows = [
        same | {"index": i, "name": spec["name"], "spec": spec, "dispatched_at": None}
        for i, spec in enumerate(phase_specs)
    ]
    rows[0]["dispatched_at"] = first_dispatched_at
    if conn.dialect.name == "postgresql":
        run_id, ids = _one_statement(conn, values, same, rows)
    else:
        run_id, ids = _two_statements(conn, values, rows)
    stored = [row | {"id": phase_id, "run_id": run_id} for row, phase_id in zip(rows, ids, strict=True)]
    return StoredRun(values | {"id": run_id}, stored)


def _two_statements(
    conn: Connection, values: dict[str, Any], rows: list[dict[str, Any]]
) -> tuple[int, list[int]]:
    run_id = conn.execute(_INSERT_RUN, values).scalar_one()
    ids = conn.execute(_INSERT_PHASES, [r | {"run_id": run_id} for r in rows]).scalars().all()
    return run_id, list(ids)


def _one_statement(
    conn: Connection, values: dict[str, Any], same: dict[str, Any], rows: list[dict[str, Any]]
) -> tuple[int, list[int]]:
    params = {f"run_{k}": v for k, v in values.items()} | {f"phase_{k}": v for k, v in same.items()}
    params["phases"] = [{"name": r["name"], "spec": r["spec"]} for r in rows]
    params["first_dispatched_at"] = rows[0]["dispatched_at"]
    returned = conn.execute(_INSERT_BOTH, params).all()
    by_index = sorted(returned, key=lambda r: r[2])  # (run_id, id, index): INSERT … SELECT has no set order
    return by_index[0][0], [phase_id for _, phase_id, _ in by_index]


def _insert_both() -> Insert:
    """`WITH new_run AS (INSERT INTO runs … RETURNING id) INSERT INTO phases … SELECT … FROM new_run,
    json_array_elements(:phases) WITH ORDINALITY`: the phases' names and specs from the array, the
    first phase's `dispatched_at` by its ordinality, every other column one parameter for all."""
    new_run = (
        insert(_RUNS)
        .values({c.key: bindparam(f"run_{c.key}", type_=c.type) for c in _RUNS.c if c.key != "id"})
        .returning(_RUNS.c.id)
        .cte("new_run")
    )
    p = (
        func.json_array_elements(bindparam("phases", type_=JSON))
        .table_valued(column("value", JSON), with_ordinality="ordinality")
        .render_derived("p")
    )
    same = [c for c in _PHASES.c if c.key not in _PER_PHASE]
    first_at = bindparam("first_dispatched_at", type_=_PHASES.c.dispatched_at.type)
    rows = select(
        new_run.c.id,
        p.c.ordinality - 1,
        p.c.value["name"].astext,
        p.c.value["spec"],
        case((p.c.ordinality == 1, first_at)),
        *[bindparam(f"phase_{c.key}", type_=c.type) for c in same],
    ).select_from(new_run.join(p, true()))
    columns = ["run_id", "index", "name", "spec", "dispatched_at", *[c.key for c in same]]
    return (
        insert(_PHASES).from_select(columns, rows).returning(_PHASES.c.run_id, _PHASES.c.id, _PHASES.c.index)
    )


# Built once: a statement made per call costs its construction and cache-key walk every `POST /runs`.
_INSERT_RUN = insert(_RUNS).returning(_RUNS.c.id)
_INSERT_PHASES = insert(_PHASES).returning(_PHASES.c.id, sort_by_parameter_order=True)
_INSERT_BOTH = _insert_both()
