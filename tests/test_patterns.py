"""Failure patterns that become rules: masking, RE2 rules, mining seeded history into clusters, measuring
a candidate on history, accepting it through the API (versioned), and a worker's recovery applying it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.patterns_cli import render_report
from shared.db import transaction
from shared.keys import create_key
from shared.models import Attempt, utcnow
from shared.patterns.masking import mask
from shared.patterns.mine import mine
from shared.patterns.regex import CompiledRule, RuleRegexError, compile_rule, template_regex
from shared.patterns.schemas import RuleIn
from shared.patterns.store import RuleBook, accept, retire, rule_set
from shared.settings import Settings
from shared.specs import PhaseSpec
from shared.states import AttemptOutcome
from shared.telemetry import pattern_hits
from tests.support.failures import DOCTOR, PLAN, frob, pytest_failure, seed_history
from workers.attempt import Attempted
from workers.hardening import match_failure
from workers.record import AttemptRecord
from workers.recovery import analyse


def test_masking_replaces_volatile_tokens_by_their_kind() -> None:
    line = "Boom: widget 17 at /tmp/pytest-3/x.txt (1.5s) sha 3f9a2bc1d line 42: src/a.py:12: 0xdead"
    assert mask(line) == "Boom: widget <NUM> at <TMP> (<DUR>) sha <SHA> line <NUM>: <PATH>: <HEX>"


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        ("", "empty"),
        ("a*", "empty string"),
        (r"(a)\1", "RE2"),
        ("(?=a)b", "RE2"),
        ("x" * 301, "longer than 300"),
    ],
)
def test_a_rule_pattern_that_is_not_bounded_and_linear_is_refused(pattern: str, why: str) -> None:
    with pytest.raises(RuleRegexError, match=why):
        compile_rule(pattern)


def test_rule_search_stays_linear_on_a_catastrophic_pattern() -> None:
    search = compile_rule(r"(a+)+b")  # exponential under a backtracking engine, linear under RE2
    assert not search("a" * 200_000 + "c")


def test_a_rule_matches_within_one_line_and_anchors_at_each_line() -> None:
    find = compile_rule(r"^boom\s+\S+$")
    assert find("first line\nboom  now\nlast") == "boom  now"
    assert find("boom\nnow") is None  # never across lines
    assert compile_rule(r"quota\s+exceeded")("a\nquota\nexceeded") is None


def test_a_template_becomes_a_pattern_that_matches_its_raw_lines() -> None:
    pattern = template_regex("E FrobnicatorError: quota exceeded for widget <NUM> after <DUR>")
    assert pattern.startswith("E\\s+FrobnicatorError:")
    search = compile_rule(pattern)
    assert search("E     FrobnicatorError: quota exceeded for widget 99 after 0.5s")
    assert not search("E     FrobnicatorError: quota reached for widget 99")


def test_the_miner_finds_each_new_shape_as_its_own_cluster_ranked(pg: str, repo: Path) -> None:
    history = seed_history(pg, repo)
    with transaction(pg) as session:
        report = mine(session)
    shapes = ["frob", "drift", "linker"]  # by occurrences x runs: 24, 9, 8
    assert len(report.clusters) == 3, [c.template for c in report.clusters]
    for cluster, shape in zip(report.clusters, shapes, strict=True):
        occurrences, runs = PLAN[shape]
        action, tokens = DOCTOR[shape]
        assert (cluster.occurrences, cluster.distinct_runs, cluster.score) == (
            occurrences,
            runs,
            occurrences * runs,
        )
        assert {e.attempt_id for e in cluster.examples} <= set(history.by_shape[shape])
        assert (cluster.doctor_action, cluster.doctor_calls) == (action, occurrences)
        assert cluster.doctor_tokens == occurrences * tokens
        assert "<" in cluster.template and "/tmp" not in cluster.template
    assert report.clusters[0].template == "E FrobnicatorError: quota exceeded for widget <NUM> after <DUR>"
    assert report.scanned == 6 + 3 + 4 + 5  # the explained and the infra failures are not mined


def test_api_mines_measures_accepts_versions_and_retires(
    client: TestClient, fleet_settings: Settings, repo: Path
) -> None:
    history = seed_history(fleet_settings.database_url, repo)
    report = client.get("/failures/patterns").json()
    printed = render_report(report)
    assert "score 24 (6 attempts, 4 runs) doctor: retry_with_fix, 6 calls, 5400 tokens" in printed
    assert "diagnosis: d" in printed
    candidate = report["clusters"][0]["candidate"]
    figures = client.post("/failures/rules/measure", json={"pattern": candidate["pattern"]}).json()
    assert figures["failed_hits"] == figures["unexplained_hits"] == 6
    assert figures["hit_runs"] == 4
    assert (
        figures["false_hits"] == 0
    )  # the success that mentions it does so in builder output, not an `E` line
    assert (figures["doctor_calls_saved"], figures["doctor_tokens_saved"]) == (6, 6 * 900)
    broad = client.post("/failures/rules/measure", json={"pattern": "FrobnicatorError"}).json()
    assert (broad["failed_hits"], broad["false_hits"]) == (6, 1)

    assert client.get("/failures/rules").json() == {"version": 0, "rules": []}
    rule = {"name": "frob-quota", "pattern": candidate["pattern"], "advice": "Stay under the widget quota."}
    created = client.post("/failures/rules", json=rule)
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["version"], body["hits"], body["measurement"]["failed_hits"]) == (1, 0, 6)
    assert set(body["measurement"]["example_attempt_ids"]) <= set(history.by_shape["frob"])
    second = client.post("/failures/rules", json={**rule, "name": "frob-2", "pattern": "Frobnicator"}).json()
    assert second["version"] == 2
    retired = client.post(f"/failures/rules/{second['id']}/retire").json()
    assert retired["retired_at"] is not None
    listing = client.get("/failures/rules").json()
    assert listing["version"] == 3 and [r["name"] for r in listing["rules"]] == ["frob-quota"]
    assert len(client.get("/failures/rules", params={"include_retired": True}).json()["rules"]) == 2


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x", "pattern": "(a)\\1", "advice": "a"}, "pattern"),
        ({"name": "x", "pattern": "a*", "advice": "a"}, "pattern"),
        ({"name": "Bad Name", "pattern": "boom", "advice": "a"}, "name"),
        ({"name": "x", "pattern": "boom"}, "advice"),
    ],
)
def test_an_unacceptable_rule_is_a_422_naming_the_field(
    client: TestClient, body: dict[str, Any], field: str
) -> None:
    response = client.post("/failures/rules", json=body)
    assert response.status_code == 422, response.text
    assert field in [str(part) for d in response.json()["detail"] for part in d["loc"]]


def test_rule_errors_404_401_403_and_a_taken_name(client: TestClient, fleet_settings: Settings) -> None:
    rule = {"name": "boom", "pattern": "BoomError", "advice": "a"}
    assert client.post("/failures/rules", json=rule).status_code == 201
    taken = client.post("/failures/rules", json=rule)
    assert taken.status_code == 422 and taken.json()["detail"][0]["loc"] == ["body", "name"]
    assert client.get("/failures/rules/999").status_code == 404
    assert client.post("/failures/rules/999/retire").status_code == 404
    assert client.get("/failures/rules", headers={"X-API-Key": "nope"}).status_code == 401
    with transaction(fleet_settings.database_url) as session:
        _, plain = create_key(session, "user", owner="team-a")
    user = {"X-API-Key": plain}
    assert client.get("/failures/rules", headers=user).status_code == 200
    assert client.get("/failures/patterns", headers=user).status_code == 403
    assert client.post("/failures/rules", json={**rule, "name": "b2"}, headers=user).status_code == 403


def test_a_rulebook_reloads_when_the_version_moves_and_recovery_skips_the_doctor(
    client: TestClient, fleet_settings: Settings
) -> None:
    url = fleet_settings.database_url
    book = RuleBook()
    assert book.current(url) == []
    rule = {"name": "frob-quota", "pattern": r"FrobnicatorError:\s+quota", "advice": "Stay under quota."}
    assert client.post("/failures/rules", json=rule).status_code == 201
    (loaded,) = book.current(url)
    assert (loaded.name, loaded.version) == ("frob-quota", 1)
    attempted = _failed(pytest_failure(frob(3)))
    phase = PhaseSpec(name="p", goal="g", scope=["src/"])
    recovery = analyse(phase, attempted, gateway=None, doctor_model="m", attempt=1, rules=[loaded])
    assert recovery.hardening_hit and not recovery.doctor_called
    assert recovery.mitigation is not None
    assert recovery.mitigation["pattern"] == "rule:frob-quota"
    assert (recovery.mitigation["rule_id"], recovery.mitigation["rule_version"]) == (loaded.id, 1)
    assert "FrobnicatorError" in recovery.mitigation["evidence"]


def test_the_built_in_six_come_before_accepted_rules() -> None:
    rule = compile_rule("No module named")
    rules = [CompiledRule(1, "catch-all-imports", 1, "x", rule)]
    hit = match_failure("ModuleNotFoundError: No module named 'yaml'", exit_code=1, scope=[], rules=rules)
    assert hit is not None and hit.pattern == "missing_python_dependency"
    hit = match_failure("something: No module named here", exit_code=1, scope=[], rules=rules)
    assert hit is not None and (hit.pattern, hit.rule_id) == ("rule:catch-all-imports", 1)


def test_run_metrics_count_hits_by_pattern(pg: str, repo: Path) -> None:
    history = seed_history(pg, repo)
    with transaction(pg) as session:
        assert pattern_hits(session, history.run_ids[0]) == {"missing_python_dependency": 3}


def _failed(output: str) -> Attempted:
    now = utcnow()
    record = AttemptRecord(
        number=1,
        outcome=AttemptOutcome.VALIDATION_FAILED,
        started_at=now,
        finished_at=now,
        failure_reason="validation failed (exit 1)",
        builder_output=None,
        patch=None,
        changed_paths=[],
        validation_output=output,
        commit_sha=None,
    )
    return Attempted(record=record, built=None, failure_output=output, exit_code=1)


def test_the_rule_store_versions_and_counts_hits_on_postgres_and_sqlite(db_url: str, repo: Path) -> None:
    history = seed_history(db_url, repo)
    book = RuleBook()
    with transaction(db_url) as session:
        row = accept(session, RuleIn(name="frob", pattern="FrobnicatorError", advice="a"), "ops")
        rule_id = row.id
    (loaded,) = book.current(db_url)
    with transaction(db_url) as session:
        attempt = session.get(Attempt, history.by_shape["frob"][0])
        assert attempt is not None
        attempt.mitigation = {"pattern": "rule:frob", "rule_id": rule_id, "rule_version": 1}
    with transaction(db_url) as session:
        assert rule_set(session).rules[0].hits == 1
        retire(session, rule_id)
        retire(session, rule_id)  # twice: one version only
    assert (loaded.version, book.current(db_url)) == (1, [])
    with transaction(db_url) as session:
        assert rule_set(session, include_retired=True).version == 2
