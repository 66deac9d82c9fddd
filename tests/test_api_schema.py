"""Schemathesis against the live OpenAPI of the real app on real Postgres and Redis: whatever it
sends, valid (positive) or not (negative), no response is a 5xx, and every response matches the
schema: a documented status code, its body schema and its content type."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import select

from api.app import create_app
from api.sample_repo import sample_spec
from shared.db import transaction
from shared.models import Attempt, Phase, utcnow
from shared.settings import Settings
from shared.states import AttemptOutcome
from workers.celery_app import create_app as create_celery

MAX_EXAMPLES = 30
"""Per operation: the whole file stays well under a minute on two cores."""

# Not negative_data_rejection: it counts the X-API-Key we add to every case as a missing header, and
# FastAPI (by design) ignores query parameters it does not know.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture
def live_schema(fleet_settings: Settings) -> Iterator[schemathesis.BaseSchema]:
    app = create_app(fleet_settings, create_celery(fleet_settings))
    with TestClient(app):  # runs the app's startup, as a server would
        yield schemathesis.openapi.from_asgi("/openapi.json", app)


OPERATIONS = [
    ("POST", "/runs", MAX_EXAMPLES),
    ("GET", "/runs", MAX_EXAMPLES),
    ("GET", "/runs/{run_id}", MAX_EXAMPLES),
    ("POST", "/runs/{run_id}/cancel", MAX_EXAMPLES),
    ("GET", "/runs/{run_id}/attempts", MAX_EXAMPLES),
    ("GET", "/runs/{run_id}/metrics", MAX_EXAMPLES),
    ("POST", "/campaigns", MAX_EXAMPLES),
    ("GET", "/campaigns", MAX_EXAMPLES),
    ("GET", "/campaigns/{campaign_id}", MAX_EXAMPLES),
    ("POST", "/campaigns/{campaign_id}/cancel", MAX_EXAMPLES),
    ("GET", "/campaigns/{campaign_id}/report", MAX_EXAMPLES),
    ("POST", "/plans/normalize", MAX_EXAMPLES),
    ("GET", "/plans/drafts/{draft_id}", 10),
    ("GET", "/failures/patterns", MAX_EXAMPLES),
    ("POST", "/failures/rules/measure", MAX_EXAMPLES),
    ("GET", "/failures/rules", MAX_EXAMPLES),
    ("POST", "/failures/rules", MAX_EXAMPLES),
    ("GET", "/failures/rules/{rule_id}", MAX_EXAMPLES),
    ("POST", "/failures/rules/{rule_id}/retire", MAX_EXAMPLES),
    # Approvals have few inputs (an id, a state, a reason): fewer examples find what there is.
    ("GET", "/approvals", 10),
    ("GET", "/approvals/{approval_id}", 10),
    ("POST", "/approvals/{approval_id}/approve", 10),
    ("POST", "/approvals/{approval_id}/reject", 10),
    ("GET", "/fleet", 3),  # no inputs but the key, and each call waits out a 1 s Celery inspect
    ("GET", "/metrics", 3),
    ("GET", "/health", 3),
]
WITHOUT_INPUTS = {"/metrics", "/health"}
"""Nothing to make invalid: negative generation has no case to offer."""

CASES = [
    pytest.param(method, path, examples, mode, id=f"{method} {path} {mode.value}")
    for method, path, examples in OPERATIONS
    for mode in GenerationMode
    if not (mode is GenerationMode.NEGATIVE and path in WITHOUT_INPUTS)
]
# schemathesis.pytest.from_fixture reads a private pytest attribute that pytest 9 removed, so each
# operation's strategy is driven by Hypothesis here directly.


@pytest.mark.parametrize(("method", "path", "examples", "mode"), CASES)
def test_no_input_gets_a_server_error_or_a_response_off_the_schema(
    live_schema: schemathesis.BaseSchema,
    api_key: str,
    method: str,
    path: str,
    examples: int,
    mode: GenerationMode,
) -> None:
    @given(case=live_schema[path][method].as_strategy(generation_mode=mode))
    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def call(case: schemathesis.Case) -> None:
        case.call_and_validate(headers={"X-API-Key": api_key}, checks=CHECKS)

    call()


def add_attempt(url: str, run_id: int) -> None:
    """A recorded attempt on phase 0, so the read's attempt log is not empty."""
    with transaction(url) as session:
        phase = session.scalars(select(Phase).where(Phase.run_id == run_id, Phase.index == 0)).one()
        now = utcnow()
        session.add(
            Attempt(
                run_id=run_id,
                phase_id=phase.id,
                number=1,
                worker="w@host",
                lease_epoch=1,
                started_at=now,
                finished_at=now,
                outcome=AttemptOutcome.VALIDATION_FAILED,
                failure_reason="1 test failed",
                changed_paths=["src/greet.py"],
            )
        )


def test_a_real_run_and_every_read_of_it_match_the_schema(
    live_schema: schemathesis.BaseSchema, api_key: str, sample_repo: Path, fleet_settings: Settings
) -> None:
    """Random ids almost never name a run, so the 200 bodies get checked here, on a stored run."""
    key = {"X-API-Key": api_key}
    created = live_schema["/runs"]["POST"].Case(
        body=sample_spec(sample_repo, 0), media_type="application/json"
    )
    resp = created.call_and_validate(headers=key, checks=CHECKS)
    assert resp.status_code == 201
    run_id = resp.json()["id"]
    add_attempt(fleet_settings.database_url, run_id)
    for method, path in [
        ("GET", "/runs/{run_id}"),
        ("GET", "/runs/{run_id}/metrics"),
        ("GET", "/runs/{run_id}/attempts"),
        ("POST", "/runs/{run_id}/cancel"),
    ]:
        case = live_schema[path][method].Case(path_parameters={"run_id": run_id})
        assert case.call_and_validate(headers=key, checks=CHECKS).status_code == 200
    read = live_schema["/runs/{run_id}"]["GET"].Case(path_parameters={"run_id": run_id})
    assert read.call(headers=key).json()["phases"][0]["attempt_log"][0]["changed_paths"] == ["src/greet.py"]
    attempts = live_schema["/runs/{run_id}/attempts"]["GET"].Case(
        path_parameters={"run_id": run_id}, query={"phase": 0}
    )
    (detail,) = attempts.call_and_validate(headers=key, checks=CHECKS).json()
    assert (detail["phase_index"], detail["number"], detail["failure_reason"]) == (0, 1, "1 test failed")
    missing = live_schema["/runs/{run_id}/attempts"]["GET"].Case(
        path_parameters={"run_id": run_id}, query={"phase": 99}
    )
    assert missing.call_and_validate(headers=key, checks=CHECKS).status_code == 404
    listing = live_schema["/runs"]["GET"].Case(query={"limit": 1})
    assert listing.call_and_validate(headers=key, checks=CHECKS).json()["items"][0]["state"] == "CANCELLED"


def test_the_schema_covers_every_route(live_schema: schemathesis.BaseSchema) -> None:
    found = {(op.ok().method.upper(), op.ok().path) for op in live_schema.get_all_operations()}
    assert found == {(method, path) for method, path, _ in OPERATIONS}
