"""`create_run` stores a run and its phases without the ORM (one statement on Postgres, two INSERTs on
SQLite): the rows must be exactly what the ORM's unit of work wrote before, and `POST /runs`'s body (built
from the values written) what a read back says. `submit` commits it on its own, in autocommit on Postgres."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from api.sample_repo import sample_spec
from api.schemas import RunOut
from shared.db import engine_for, session_factory, transaction
from shared.errors import InvalidSpec
from shared.git import resolve_ref
from shared.models import Phase, Run, utcnow
from shared.runs import create_run, get_run, submit
from shared.specs import RunSpec
from shared.states import PhaseState, RunState

RUN_COLUMNS = [c.key for c in Run.__table__.c]
PHASE_COLUMNS = [c.key for c in Phase.__table__.c]


def spec_of(repo: Path, phases: int = 4) -> RunSpec:
    body = sample_spec(repo, 7)
    body["phases"] = [{**body["phases"][0], "name": f"step-{k}", "goal": f"goal {k}"} for k in range(phases)]
    return RunSpec.model_validate(body)


def orm_reference(
    session: Session, spec: RunSpec, *, owner: str | None, claim_first: bool, parent: int | None
) -> int:
    """What `create_run` wrote when it went through the ORM (the code it replaced), for comparison."""
    base_sha = resolve_ref(spec.repo, spec.base_ref)
    run = Run(
        name=spec.name,
        repo=str(Path(spec.repo).resolve()),
        base_ref=spec.base_ref,
        base_sha=base_sha,
        head_sha=base_sha,
        spec=spec.model_dump(mode="json"),
        spec_hash=spec.spec_hash(),
        config=spec.config.model_dump(mode="json"),
        state=RunState.QUEUED,
        owner=owner,
        campaign_id=None,
        parent_run_id=parent,
        lease_epoch=0,
        cancel_requested=False,
    )
    claimed_at = utcnow() if claim_first else None
    run.phases = [
        Phase(
            index=i,
            name=p.name,
            spec=p.model_dump(mode="json"),
            state=PhaseState.QUEUED,
            dispatched_at=claimed_at if i == 0 else None,
        )
        for i, p in enumerate(spec.phases)
    ]
    session.add(run)
    session.flush()
    return run.id


def rows(url: str, run_id: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Every column of the run and of its phases (by index), read back in a new transaction."""
    with transaction(url) as session:
        run = session.execute(select(Run.__table__).where(Run.id == run_id)).one()._asdict()
        phases = [
            r._asdict()
            for r in session.execute(
                select(Phase.__table__).where(Phase.run_id == run_id).order_by(Phase.index)
            )
        ]
    return run, phases


def comparable(row: dict[str, Any]) -> dict[str, Any]:
    """A row without what must differ between two inserts: ids (`rows` found the phases by their run's)
    and instants (only whether they are set)."""
    out = {k: v for k, v in row.items() if k not in ("id", "run_id")}
    for key in ("created_at", "dispatched_at"):
        if key in out:
            out[key] = out[key] is not None
    return out


@pytest.mark.parametrize(("claim_first", "count"), [(False, 4), (True, 4), (True, 1)])
def test_the_rows_are_those_the_orm_wrote(
    db_url: str, sample_repo: Path, claim_first: bool, count: int
) -> None:
    spec = spec_of(sample_repo, count)
    with transaction(db_url) as session:
        parent = create_run(session, spec).id
        ours = create_run(session, spec, owner="ada", parent_run_id=parent, claim_first=claim_first).id
        theirs = orm_reference(session, spec, owner="ada", claim_first=claim_first, parent=parent)
    run, phases = rows(db_url, ours)
    ref_run, ref_phases = rows(db_url, theirs)
    assert comparable(run) == comparable(ref_run)
    assert [comparable(p) for p in phases] == [comparable(p) for p in ref_phases]
    assert [p["name"] for p in phases] == [f"step-{k}" for k in range(count)]
    assert [p["spec"]["goal"] for p in phases] == [f"goal {k}" for k in range(count)]
    assert [p["dispatched_at"] is not None for p in phases] == [claim_first] + [False] * (count - 1)
    assert run["parent_run_id"] == parent and run["owner"] == "ada" and run["state"] == RunState.QUEUED
    assert run["spec"] == spec.model_dump(mode="json")


@pytest.mark.parametrize("count", [1, 4])
def test_the_values_returned_are_the_rows_stored(db_url: str, sample_repo: Path, count: int) -> None:
    with transaction(db_url) as session:
        stored = create_run(session, spec_of(sample_repo, count), owner="ada", claim_first=True)
    run, phases = rows(db_url, stored.id)
    assert sorted(stored.values) == sorted(RUN_COLUMNS)
    assert all(sorted(p) == sorted(PHASE_COLUMNS) for p in stored.phase_values)
    assert stored.values == run
    assert stored.phase_values == phases
    assert stored.phase_ids == [p["id"] for p in phases]


def test_the_submit_body_is_what_reading_the_run_back_says(db_url: str, sample_repo: Path) -> None:
    with transaction(db_url) as session:
        stored = create_run(session, spec_of(sample_repo), owner="ada", claim_first=True)
        body = RunOut.stored(stored).model_dump(mode="json")
    with transaction(db_url) as session:
        assert body == RunOut.of(get_run(session, stored.id)).model_dump(mode="json")
    assert body["result_branch"] == f"autopack/run-{stored.id}"
    assert [p["index"] for p in body["phases"]] == [0, 1, 2, 3]


def test_an_unknown_ref_stores_nothing(db_url: str, sample_repo: Path) -> None:
    spec = spec_of(sample_repo).model_copy(update={"base_ref": "no-such-branch"})
    with transaction(db_url) as session, pytest.raises(InvalidSpec) as raised:
        create_run(session, spec)
    assert raised.value.field == "base_ref"
    with transaction(db_url) as session:
        assert session.scalars(select(Run.id)).all() == []
        assert session.scalars(select(Phase.id)).all() == []


def test_a_submitted_run_is_committed_with_its_first_phase_claimed(db_url: str, sample_repo: Path) -> None:
    with session_factory(db_url)() as session:
        stored = submit(session, spec_of(sample_repo, 3), owner="ada")
        assert not session.in_transaction()
    run, phases = rows(db_url, stored.id)  # another session: it sees only what was committed
    assert run == stored.values and phases == stored.phase_values
    assert [p["dispatched_at"] is not None for p in phases] == [True, False, False]


REFUSE_FOURTH_PHASE = """
CREATE FUNCTION refuse_phase() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'refused phase %', NEW.index; END $$;
CREATE TRIGGER refuse_phase BEFORE INSERT ON phases FOR EACH ROW WHEN (NEW.index = 3)
EXECUTE FUNCTION refuse_phase();
"""


def test_a_phase_the_database_refuses_takes_its_autocommitted_run_with_it(pg: str, sample_repo: Path) -> None:
    """`submit` writes without a transaction of its own on Postgres: the run and its phases must be
    one statement, so a refusal of the last phase (the database's own, by a trigger) leaves no run."""
    with engine_for(pg).begin() as conn:
        conn.execute(text(REFUSE_FOURTH_PHASE))
    try:
        with session_factory(pg)() as session, pytest.raises(DBAPIError, match="refused phase 3"):
            submit(session, spec_of(sample_repo, 4), owner="ada")
        with session_factory(pg)() as session:
            assert session.scalar(select(func.count()).select_from(Run)) == 0
            assert session.scalar(select(func.count()).select_from(Phase)) == 0
        with session_factory(pg)() as session:
            ok = submit(session, spec_of(sample_repo, 3), owner="ada")  # three phases pass the trigger
        assert len(rows(pg, ok.id)[1]) == 3
    finally:
        with engine_for(pg).begin() as conn:
            conn.execute(text("DROP TRIGGER refuse_phase ON phases; DROP FUNCTION refuse_phase()"))
