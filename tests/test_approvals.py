"""Approvals without workers: path-rule classification, and the HTTP API's 404/409/422 and ownership
on real Postgres (tests/test_approvals_fleet.py runs paused phases on real worker processes)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import select

from api import cli, cli_support
from api.client import ApiClient
from api.serve import api_in_thread, free_port
from shared.approvals import store, webhook
from shared.approvals.rules import PathRule, RiskTier, RulePolicy, classify, matches, parse_rule
from shared.approvals.store import Requested, expire_due
from shared.db import transaction
from shared.fleet import fleet_record
from shared.keys import create_key
from shared.models import Phase, Run, WebhookDelivery, utcnow
from shared.outbox import _runs_needing_action
from shared.settings import Settings
from shared.states import PhaseState
from tests.support.scenario import wait_terminal
from tests.test_dashboard import log_in
from workers.embedded import embedded_fleet


def rule(pattern: str, tier: str, policy: str) -> PathRule:
    return PathRule(pattern=pattern, tier=RiskTier(tier), policy=RulePolicy(policy))


@pytest.mark.parametrize(
    ("pattern", "path", "hit"),
    [
        ("infra/**", "infra/a/b.tf", True),
        ("infra/**", "infrastructure/a", False),
        ("infra/", "infra/main.tf", True),
        ("infra", "infra/main.tf", True),
        ("infra", "infra2/main.tf", False),
        ("*.lock", "poetry.lock", True),
        ("*.lock", "sub/poetry.lock", False),
        ("**/*.lock", "sub/poetry.lock", True),
        ("src/?.py", "src/a.py", True),
        ("src/?.py", "src/ab.py", False),
        ("a.b", "aXb", False),
    ],
)
def test_globs_keep_single_stars_within_one_part_and_plain_paths_cover_their_subtree(
    pattern: str, path: str, hit: bool
) -> None:
    assert matches(pattern, path) is hit


def test_the_strictest_policy_of_the_ruled_paths_decides_and_the_first_matching_rule_wins() -> None:
    rules = [
        rule("docs/**", "low", "auto"),
        rule("infra/**", "high", "ask"),
        rule("secrets/**", "critical", "deny"),
        rule("**", "medium", "deny"),
    ]
    assert classify(["src/x.py"], rules[:3]) is None
    auto = classify(["docs/a.md"], rules)
    assert auto is not None and auto.policy == RulePolicy.AUTO
    ask = classify(["docs/a.md", "infra/main.tf"], rules)
    assert ask is not None and ask.policy == RulePolicy.ASK
    assert [(m.path, m.tier, m.policy) for m in ask.matches] == [
        ("docs/a.md", RiskTier.LOW, RulePolicy.AUTO),
        ("infra/main.tf", RiskTier.HIGH, RulePolicy.ASK),
    ]
    deny = classify(["infra/main.tf", "secrets/k", "src/x.py"], rules)
    assert deny is not None and deny.policy == RulePolicy.DENY
    assert "secrets/k (critical, deny by secrets/**)" in deny.reason()


def test_auto_passes_only_low_risk_a_higher_tier_asks() -> None:
    verdict = classify(["db/schema.sql"], [rule("db/**", "high", "auto")])
    assert verdict is not None and verdict.policy == RulePolicy.ASK


def test_settings_spell_rules_as_pattern_tier_policy_and_refuse_a_malformed_one() -> None:
    s = Settings(approval_rules="infra/**=high:ask, a=b/*.x=low:auto", _env_file=None)  # type: ignore[call-arg]
    assert [(r.pattern, r.tier, r.policy) for r in s.path_rules] == [
        ("infra/**", RiskTier.HIGH, RulePolicy.ASK),
        ("a=b/*.x", RiskTier.LOW, RulePolicy.AUTO),
    ]
    for bad in ("infra/**", "infra/**=high", "infra/**=extreme:ask", "x=low:maybe"):
        with pytest.raises(ValueError):
            parse_rule(bad)
        with pytest.raises(ValueError):
            Settings(approval_rules=bad, _env_file=None)  # type: ignore[call-arg]


# The HTTP API on real Postgres (no worker consumes: phases are paused by hand, as a worker would).


def _submit(client: TestClient, repo: Path, headers: dict[str, str] | None = None) -> int:
    spec = {"repo": str(repo), "phases": [{"name": "p", "scope": ["src/"], "command": "true"}]}
    response = client.post("/runs", json=spec, headers=headers or {})
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def _pause(db_url: str, run_id: int, expires_in: float = 3600, action: str = "reject") -> int:
    """What `workers.record.pause` leaves: the phase AWAITING_APPROVAL, a pending approval, no lease.
    Twice, as a redelivered task would: the second request finds the first."""
    verdict = classify(["infra/main.tf"], [rule("infra/**", "high", "ask")])
    assert verdict is not None
    req = Requested(1, verdict, "diff --git a/infra/main.tf b/infra/main.tf\n", "a" * 40, "refs/x", {}, "w")
    with transaction(db_url) as session:
        run = session.get(Run, run_id)
        assert run is not None
        phase = run.phases[0]
        phase.state = PhaseState.AWAITING_APPROVAL
        phase.dispatched_at = utcnow()
        ids = {
            store.request(session, run, phase, req, timeout_seconds=expires_in, timeout_action=action).id
            for _ in range(2)
        }
    (approval_id,) = ids
    return approval_id


def _run_of(db_url: str, approval_id: int) -> int:
    with transaction(db_url) as session:
        return store.get_approval(session, approval_id, None)[0].run_id


def _phase(db_url: str, run_id: int) -> Phase:
    with transaction(db_url) as session:
        run = session.get(Run, run_id)
        assert run is not None
        session.expunge(run.phases[0])
        return run.phases[0]


def test_an_approval_is_read_approved_once_and_its_phase_goes_back_to_the_queue(
    client: TestClient, fleet_settings: Settings, sample_repo: Path
) -> None:
    db = fleet_settings.database_url
    run_id = _submit(client, sample_repo)
    approval_id = _pause(db, run_id)
    pending = client.get("/approvals", params={"state": "pending"}).json()["items"]
    assert [a["id"] for a in pending] == [approval_id]
    detail = client.get(f"/approvals/{approval_id}").json()
    assert detail["paths"] == [
        {"path": "infra/main.tf", "pattern": "infra/**", "tier": "high", "policy": "ask"}
    ]
    assert detail["diff"].startswith("diff --git") and detail["run_id"] == run_id
    assert detail["phase_index"] == 0 and detail["expires_at"] > detail["requested_at"]
    assert client.post(f"/approvals/{approval_id}/approve", json={"reason": "ok"}).status_code == 200
    again = client.post(f"/approvals/{approval_id}/reject", json={"reason": "too late"})
    assert again.status_code == 409 and "already approved" in again.json()["detail"]
    decided = client.get(f"/approvals/{approval_id}").json()
    assert decided["state"] == "approved" and decided["decided_by"].startswith("key ")
    assert decided["reason"] == "ok" and decided["decided_at"] is not None
    phase = _phase(db, run_id)
    assert phase.state == PhaseState.QUEUED and phase.dispatched_at is not None  # enqueued after commit
    assert client.get("/approvals", params={"state": "pending"}).json()["items"] == []


def test_another_owners_approval_is_404_and_bad_requests_are_422(
    client: TestClient, fleet_settings: Settings, sample_repo: Path
) -> None:
    db = fleet_settings.database_url
    with transaction(db) as session:
        _, bob = create_key(session, "bob")
    approval_id = _pause(db, _submit(client, sample_repo))  # the admin's run ("tests")
    as_bob = {"X-API-Key": bob}
    assert client.get(f"/approvals/{approval_id}", headers=as_bob).status_code == 404
    assert client.post(f"/approvals/{approval_id}/approve", headers=as_bob).status_code == 404
    assert client.get("/approvals", headers=as_bob).json()["items"] == []
    bobs = _pause(db, _submit(client, sample_repo, as_bob))
    assert [a["id"] for a in client.get("/approvals", headers=as_bob).json()["items"]] == [bobs]
    assert client.get(f"/approvals/{bobs}").status_code == 200  # the admin sees every owner's
    assert client.get("/approvals/999999").status_code == 404
    assert client.get("/approvals/0").status_code == 422
    assert client.get("/approvals", params={"state": "maybe"}).status_code == 422
    assert client.post(f"/approvals/{approval_id}/reject", json={}).status_code == 422
    assert client.post(f"/approvals/{approval_id}/reject", json={"reason": ""}).status_code == 422
    assert client.get(f"/approvals/{approval_id}").json()["state"] == "pending"


def test_a_paused_run_is_not_stuck_and_the_timeout_applies_its_default_action(
    client: TestClient, fleet_settings: Settings, sample_repo: Path
) -> None:
    db = fleet_settings.database_url
    run_id = _submit(client, sample_repo)
    approval_id = _pause(db, run_id, expires_in=0.01)
    assert all(r != run_id for r, _ in _runs_needing_action(db, redispatch_after=0))
    with transaction(db) as session:
        record = fleet_record(session, redispatch_after=0)
    assert [r.run_id for r in record.stuck] == []
    assert [r.reason for r in record.waiting if r.run_id == run_id] == [
        "AWAITING_APPROVAL: paused until a person decides"
    ]
    time.sleep(0.05)
    phase = _phase(db, run_id)
    assert expire_due(db) == [(run_id, phase.id)]
    assert expire_due(db) == []  # applied once
    timed_out = client.get(f"/approvals/{approval_id}").json()
    assert (timed_out["state"], timed_out["decided_by"]) == ("rejected", "timeout")
    assert "default action (reject)" in timed_out["reason"]
    assert _phase(db, run_id).state == PhaseState.QUEUED
    lenient = _submit(client, sample_repo)  # a run whose config says approve on timeout
    lenient_approval = _pause(db, lenient, expires_in=0.01, action="approve")
    time.sleep(0.05)
    assert [run for run, _ in expire_due(db)] == [lenient]
    approved = client.get(f"/approvals/{lenient_approval}").json()
    assert (approved["state"], approved["decided_by"]) == ("approved", "timeout")


def test_cancelling_a_paused_run_cancels_its_approval(
    client: TestClient, fleet_settings: Settings, sample_repo: Path
) -> None:
    run_id = _submit(client, sample_repo)
    approval_id = _pause(fleet_settings.database_url, run_id)
    assert client.post(f"/runs/{run_id}/cancel").json()["state"] == "CANCELLED"
    assert client.get(f"/approvals/{approval_id}").json()["state"] == "cancelled"
    assert client.post(f"/approvals/{approval_id}/approve").status_code == 409


def test_the_dashboard_lists_pending_approvals_with_their_diff_and_decides_with_its_csrf_token(
    client: TestClient, fleet_settings: Settings, sample_repo: Path, api_key: str
) -> None:
    db = fleet_settings.database_url
    kept, rejected = (_pause(db, _submit(client, sample_repo)) for _ in range(2))
    ui = TestClient(client.app, follow_redirects=False)
    log_in(ui, api_key)
    assert 'id="awaiting-0"' in ui.get(f"/ui/runs/{_run_of(db, kept)}").text
    listing = ui.get("/ui/approvals")
    assert f'id="approval-{kept}"' in listing.text and "infra/main.tf" in listing.text
    assert 'class="meta">diff --git a/infra/main.tf' in listing.text and ">high<" in listing.text
    token = re.search(r'name="csrf_token" value="([^"]+)"', listing.text)
    assert token is not None
    assert ui.post(f"/ui/approvals/{kept}/approve", data={"csrf_token": "forged"}).status_code == 403
    done = ui.post(f"/ui/approvals/{kept}/approve", data={"csrf_token": token.group(1)})
    assert done.status_code == 303 and done.headers["location"] == f"/ui/approvals/{kept}"
    assert "approved by key" in ui.get(f"/ui/approvals/{kept}").text
    no_reason = ui.post(f"/ui/approvals/{rejected}/reject", data={"csrf_token": token.group(1)})
    assert no_reason.status_code == 422
    why = {"csrf_token": token.group(1), "reason": "not this region"}
    assert ui.post(f"/ui/approvals/{rejected}/reject", data=why).status_code == 303
    assert ui.post(f"/ui/approvals/{rejected}/reject", data=why).status_code == 409
    assert client.get(f"/approvals/{rejected}").json()["reason"] == "not this region"
    assert 'id="no-approvals"' in ui.get("/ui/approvals").text


# The embedded mode (SQLite, in-process broker and workers): the whole loop without any service.


@pytest.fixture
def embedded(embedded_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[ApiClient]:
    """The embedded fleet behind a real HTTP API, and `autopack approvals` pointed at it."""
    with embedded_fleet(embedded_settings, 2) as celery, api_in_thread(embedded_settings, celery) as url:
        cli_settings = embedded_settings.model_copy(update={"api_url": url})
        monkeypatch.setattr(cli_support, "get_settings", lambda: cli_settings)
        yield ApiClient(url, None)


def _governed(repo: Path, rules: list[dict[str, str]], *commands: str, attempts: int = 1) -> dict[str, Any]:
    phases = [
        {"name": f"p{i}", "scope": ["src/"], "command": c, "validation": ["test -f src/calc.py"]}
        for i, c in enumerate(commands)
    ]
    config = {"builder": "script", "max_attempts": attempts, "approval_rules": rules}
    return {"repo": str(repo), "config": config, "phases": phases}


def test_embedded_low_auto_is_recorded_ask_pauses_until_approved_and_deny_fails_the_attempt(
    embedded: ApiClient, sample_repo: Path
) -> None:
    rules = [
        {"pattern": "src/notes/", "tier": "low", "policy": "auto"},
        {"pattern": "src/infra_*.py", "tier": "critical", "policy": "ask"},
        {"pattern": "src/secret*", "tier": "critical", "policy": "deny"},
    ]
    body = _governed(
        sample_repo, rules, "mkdir -p src/notes && echo n > src/notes/a.md", "echo 'X = 1' > src/infra_net.py"
    )
    run_id = embedded.submit(body)["id"]
    deadline = time.monotonic() + 30
    while not (waiting := embedded._call("GET", "/approvals", params={"state": "pending"})["items"]):
        assert time.monotonic() < deadline, embedded.run(run_id)
        time.sleep(0.05)
    assert embedded.run(run_id)["phases"][1]["state"] == "AWAITING_APPROVAL"
    auto = embedded._call("GET", "/approvals", params={"state": "auto_approved"})["items"]
    assert [(a["phase_index"], a["decided_by"], a["paths"][0]["path"]) for a in auto] == [
        (0, "auto", "src/notes/a.md")
    ]
    approval_id = waiting[0]["id"]
    listed = CliRunner().invoke(cli.cli, ["approvals"])
    assert f"#{approval_id} run {run_id} phase 1 attempt 1: src/infra_net.py (critical)" in listed.output
    shown = CliRunner().invoke(cli.cli, ["approvals", "show", str(approval_id)]).output
    assert "src/infra_net.py: critical, ask (src/infra_*.py)" in shown and "+X = 1" in shown
    assert CliRunner().invoke(cli.cli, ["approvals", "reject", str(approval_id)]).exit_code == 2  # no reason
    done = CliRunner().invoke(cli.cli, ["approvals", "approve", str(approval_id), "--reason", "fine"])
    assert done.exit_code == 0 and f"approval {approval_id}: approved by anonymous" in done.output
    run = wait_terminal(embedded, [run_id], timeout=30)[0]
    assert run["state"] == "DONE_SUCCESS", run
    kept = embedded._call("GET", f"/approvals/{waiting[0]['id']}")["commit_sha"]
    assert run["phases"][1]["commit_sha"] == kept == run["head_sha"]
    denied = wait_terminal(
        embedded, [embedded.submit(_governed(sample_repo, rules, "echo k > src/secret.txt"))["id"]], 30
    )
    attempt = denied[0]["phases"][0]["attempt_log"][0]
    assert attempt["outcome"] == "SCOPE_VIOLATION" and "denied by approval rules" in attempt["failure_reason"]


def test_a_webhook_that_keeps_failing_is_given_up_after_its_tries_and_logs_no_secret(
    pg: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(
        database_url=pg,
        approval_webhook_url=f"http://127.0.0.1:{free_port()}/hook?token=url-token",
        approval_webhook_secret="never-logged",
        approval_webhook_attempts=2,
        approval_webhook_backoff_seconds=0.01,
        _env_file=None,  # type: ignore[call-arg]
    )
    with transaction(pg) as session:
        run = Run(repo="r", base_ref="main", base_sha="a", head_sha="a", spec={}, spec_hash="h", config={})
        run.phases = [Phase(index=0, name="p", spec={}, state=PhaseState.AWAITING_APPROVAL)]
        session.add(run)
        session.flush()
        verdict = classify(["infra/x"], [rule("infra/", "high", "ask")])
        assert verdict is not None
        req = Requested(1, verdict, None, None, None, {}, "w")
        approval = store.request(
            session, run, run.phases[0], req, timeout_seconds=60, timeout_action="reject"
        )
        webhook.enqueue(session, approval, run.phases[0], settings)
        webhook.enqueue(session, approval, run.phases[0], settings)  # once per approval
    assert webhook.deliver_due(settings) == 0
    time.sleep(0.05)
    assert webhook.deliver_due(settings) == 0
    assert webhook.deliver_due(settings) == 0  # given up: not due any more
    with transaction(pg) as session:
        (row,) = session.scalars(select(WebhookDelivery)).all()
        assert (row.tries, row.delivered_at, row.last_error) == (2, None, "ConnectError")
        assert row.gave_up_at is not None
    assert "gave up after 2 tries" in caplog.text
    assert "never-logged" not in caplog.text and "url-token" not in caplog.text
