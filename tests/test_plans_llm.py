"""The plan normalizer's LLM pass (`llm: true`): the real `anthropic` SDK against the local Messages
simulator, through the real API, on Postgres and (embedded, via the CLI) on SQLite. Its usage is
recorded like a phase's, owned by a `plan_drafts` row, and only what is safe of the answer is applied."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import select, text

from api import cli, plan_cli
from api.app import create_app
from api.client import ApiClient
from api.serve import api_in_thread
from api.ui.data import overview
from shared.db import transaction
from shared.git import git
from shared.keys import Caller, create_key
from shared.models import LlmUsageEvent, PlanDraft, utcnow
from shared.plans.infer import RepoTree
from shared.plans.ledger import ABANDONED, abandon_stale
from shared.plans.refine import NEARBY_LIMIT, PLANNER_MARKER, nearby_paths
from shared.settings import Settings
from shared.specs import RunSpec
from tests.support.simulator import MessagesSimulator, Scripted
from tests.test_plans import HEADINGS_PLAN, PYTHON_REPO, make_repo
from workers.celery_app import create_app as create_celery
from workers.embedded import embedded_fleet

USAGE = {
    "input_tokens": 1834,
    "output_tokens": 217,
    "cache_creation_input_tokens": 0,
    "cache_read_input_tokens": 0,
}
HAIKU_COST = "0.002919"  # 1834 x $1 + 217 x $5 per million (claude-haiku-4-5)
NEW_GOAL = "Add percentage discounts to `src/shop/pricing.py`: a `discount(price, percent)` function."
REFINED = {
    "phases": [
        {
            "goal": NEW_GOAL,
            "scope": ["src/shop/pricing.py", "src/shop/discount_engine.py", "src/shop/cart.py"],
        },
        {"goal": "Apply `discount` in `src/shop/cart.py` totals and test it in `tests/test_discounts.py`."},
        {"scope": ["docs/index.md", "../etc/passwd"]},
    ]
}


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repo(tmp_path_factory.mktemp("llm") / "shop", PYTHON_REPO)


def with_llm(settings: Settings, sim: MessagesSimulator | None, **extra: Any) -> Settings:
    """`settings` pointed at the simulator (no retries, so the simulator's log is every try)."""
    update: dict[str, Any] = {"llm_max_retries": 0, **extra}
    if sim is not None:
        update.update(anthropic_api_key=SecretStr("sk-test"), anthropic_base_url=sim.base_url)
    return settings.model_copy(update=update)


@contextmanager
def api(settings: Settings, key: str) -> Iterator[TestClient]:
    with TestClient(create_app(settings, create_celery(settings)), headers={"X-API-Key": key}) as c:
        yield c


def stored(url: str) -> tuple[list[PlanDraft], list[LlmUsageEvent]]:
    with transaction(url) as session:
        drafts = list(session.scalars(select(PlanDraft).order_by(PlanDraft.id)))
        usage = list(session.scalars(select(LlmUsageEvent).order_by(LlmUsageEvent.id)))
        session.expunge_all()
    return drafts, usage


def normalize(c: TestClient, repo: Path, **extra: Any) -> Any:
    return c.post("/plans/normalize", json={"repo": str(repo), "plan": HEADINGS_PLAN, "llm": True, **extra})


def test_a_refining_answer_changes_goals_and_existing_scope_and_the_run_is_admitted_as_is(
    fleet_settings: Settings, api_key: str, shop: Path
) -> None:
    sha = git("rev-parse", "main", cwd=shop).strip()[:12]
    sim = MessagesSimulator([Scripted(text=json.dumps(REFINED), usage=USAGE)])
    with sim, api(with_llm(fleet_settings, sim), api_key) as c:
        resp = normalize(c, shop)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert c.post("/runs", json=body["spec"]).status_code == 201
    (request,) = sim.bodies
    assert PLANNER_MARKER in request["system"] and request["model"] == "claude-haiku-4-5"
    prompt = request["messages"][0]["content"]
    assert "- src/shop/cart.py\n" in prompt  # the repository listing
    assert f"- tests/shop/test_pricing.py (test file of src/shop/pricing.py (exists at {sha}))" in prompt
    llm, prov, phases = body["llm"], body["provenance"], body["spec"]["phases"]
    source = f"llm: claude-haiku-4-5, plan draft {llm['draft_id']}"
    assert phases[0]["goal"] == NEW_GOAL and prov["phases.0.goal"].startswith(source)
    assert phases[0]["scope"] == ["src/shop/pricing.py", "src/shop/cart.py"]
    assert prov["phases.0.scope.0"].startswith("mentioned in line 6")  # the plan named it too
    assert prov["phases.0.scope.1"] == f"{source} (exists at {sha})"
    assert phases[1]["goal"].startswith("Apply `discount`") and prov["phases.1.goal"].startswith(source)
    assert phases[1]["scope"] == ["src/shop/cart.py", "tests/test_discounts.py", "tests/test_cart.py"]
    assert phases[2]["scope"] == ["docs/index.md", "docs/discounts.md"]  # a deliverable stays in scope
    assert phases[2]["goal"].startswith("Phase 3: Document it")  # no goal given: the plan's text
    warnings = {(w["field"], w["line"], w["message"]) for w in body["warnings"]}
    missing = f"named by the LLM pass does not exist at {sha}; not in scope"
    assert ("phases.0.scope", 5, f"`src/shop/discount_engine.py` {missing}") in warnings
    not_a_path = "`../etc/passwd` named by the LLM pass is not a repository path; not in scope"
    assert ("phases.2.scope", 16, not_a_path) in warnings
    left_out = [m for f, _, m in warnings if f == "phases.0.scope" and "tests/shop/test_pricing.py" in m]
    assert left_out == [
        f"`tests/shop/test_pricing.py` left out of scope by the LLM pass (was: test file "
        f"of src/shop/pricing.py (exists at {sha}))"
    ]
    assert llm == {
        "draft_id": llm["draft_id"],
        "model": "claude-haiku-4-5",
        "state": "done",
        "tokens": 1834 + 217,
        "cost_usd": HAIKU_COST,
        "error": None,
    }


def test_each_answered_call_has_one_usage_row_owned_by_its_draft_and_settles_the_draft(
    fleet_settings: Settings, api_key: str, shop: Path
) -> None:
    script = [Scripted(text=json.dumps(REFINED), usage=USAGE), Scripted(text=json.dumps(REFINED))]
    with MessagesSimulator(script) as sim, api(with_llm(fleet_settings, sim), api_key) as c:
        ids = [normalize(c, shop).json()["llm"]["draft_id"] for _ in script]
    drafts, usage = stored(fleet_settings.database_url)
    answered = [r for r in sim.requests if r.answered.status == 200]
    assert len(answered) == len(usage) == len(drafts) == 2
    assert [u.request_id for u in usage] == [r.request_id for r in answered]
    assert [u.plan_draft_id for u in usage] == [d.id for d in drafts] == ids
    assert all(u.run_id is None and u.role == "planner" for u in usage)
    first, second = usage
    assert (first.input_tokens, first.output_tokens, first.cost_usd) == (1834, 217, Decimal(HAIKU_COST))
    assert (second.input_tokens, second.output_tokens) == (120, 30)  # the simulator's default usage
    for draft, row in zip(drafts, usage, strict=True):
        assert draft.state == "done" and draft.finished_at is not None and draft.owner == "tests"
        assert draft.tokens_reserved == 0
        assert draft.tokens_used == (row.input_tokens or 0) + (row.output_tokens or 0)
        assert draft.cost_usd == row.cost_usd and draft.base_sha == git("rev-parse", "main", cwd=shop).strip()
    with transaction(fleet_settings.database_url) as session:  # the dashboard's spend today counts them
        today = overview(session, Caller.anonymous())
        elsewhere = overview(session, Caller(owner="someone-else", admin=False))
    assert (today["calls"], today["tokens_in"], elsewhere["calls"]) == (2, 1834 + 120, 0)


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("Sure! Here is the refined plan: phases 1-3 look good.", "the answer holds no JSON object"),
        ('{"phases": [{"goal": "only one"}]}', "the answer has 1 phases and the draft 3"),
        ('```json\n{"phases": [{"goal": 3}]}\n```', "the answer is not the JSON asked for: phases.0.goal"),
    ],
)
def test_an_unusable_answer_gives_the_deterministic_draft_with_the_reason_embedded_via_the_cli(
    embedded_settings: Settings,
    shop: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    answer: str,
    reason: str,
) -> None:
    plan_file = tmp_path / "plan.md"
    plan_file.write_text(HEADINGS_PLAN)
    with MessagesSimulator([Scripted(text=answer)]) as sim:
        settings = with_llm(embedded_settings, sim)
        with embedded_fleet(settings, 1) as celery, api_in_thread(settings, celery) as url:
            monkeypatch.setattr(plan_cli, "settings_client", lambda: ApiClient(url, None))
            argv = ["plan", "normalize", str(plan_file), "--repo", str(shop), "--llm", "--explain"]
            result = CliRunner().invoke(cli.cli, argv)
    assert result.exit_code == 0, result.output
    assert len(sim.requests) == 1
    spec = result.stdout
    assert "goal: 'Phase 1: Discount rules" in spec and NEW_GOAL not in spec
    assert f"warning: llm: the LLM pass was not applied: {reason}" in result.stderr
    assert "llm: " not in "".join(line for line in result.stderr.splitlines() if line.startswith("phases."))
    drafts, usage = stored(settings.database_url)
    (draft,), (row,) = drafts, usage
    assert draft.state == "failed" and draft.error is not None and draft.error.startswith(reason)
    assert row.plan_draft_id == draft.id and row.request_id == sim.requests[0].request_id
    assert draft.tokens_used == 150 and draft.tokens_reserved == 0
    assert f"llm: plan draft {draft.id} failed (claude-haiku-4-5, 150 tokens, $0.000270)" in result.stderr


def test_a_budget_below_the_worst_case_sends_nothing_and_names_the_setting(
    fleet_settings: Settings, api_key: str, shop: Path
) -> None:
    sim = MessagesSimulator([Scripted(text=json.dumps(REFINED))])
    with sim, api(with_llm(fleet_settings, sim, plan_llm_max_tokens=4000), api_key) as c:
        resp = normalize(c, shop)
    assert resp.status_code == 422
    (detail,) = resp.json()["detail"]
    assert detail["loc"] == ["body", "llm"]
    assert detail["msg"].startswith("AUTOPACK_PLAN_LLM_MAX_TOKENS=4000 is below this call's worst case of")
    assert sim.requests == []
    assert stored(fleet_settings.database_url) == ([], [])


def test_without_a_provider_key_llm_is_refused_before_anything_is_read_or_stored(
    fleet_settings: Settings, api_key: str, shop: Path
) -> None:
    with api(with_llm(fleet_settings, None), api_key) as c:
        resp = normalize(c, shop)
        unknown = normalize(c, shop, llm_model="gpt-4o")
        plain = c.post("/plans/normalize", json={"repo": str(shop), "plan": HEADINGS_PLAN})
    assert resp.status_code == 422
    (detail,) = resp.json()["detail"]
    assert detail["loc"] == ["body", "llm"] and "AUTOPACK_ANTHROPIC_API_KEY is not set" in detail["msg"]
    assert unknown.status_code == 422  # still the key first: nothing about models leaks without one
    assert plain.status_code == 200 and plain.json()["llm"] is None
    assert stored(fleet_settings.database_url) == ([], [])


def test_a_call_that_times_out_keeps_its_worst_case_and_records_no_usage(
    fleet_settings: Settings, api_key: str, shop: Path
) -> None:
    with MessagesSimulator([Scripted(text=json.dumps(REFINED), delay=3.0)]) as sim:
        settings = with_llm(fleet_settings, sim, plan_llm_timeout_seconds=0.5)
        with api(settings, api_key) as c:
            resp = normalize(c, shop)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["llm"]["state"] == "failed" and "timeout" in body["llm"]["error"]
    assert body["spec"]["phases"][0]["goal"].startswith("Phase 1: Discount rules")
    (draft,), usage = stored(fleet_settings.database_url)
    assert usage == [] and len(sim.requests) == 1
    assert draft.tokens_reserved == 0 and draft.tokens_used > settings.plan_llm_output_tokens
    assert body["llm"]["tokens"] == draft.tokens_used


def test_a_large_repository_lists_the_files_near_the_scope_not_all_of_them(tmp_path: Path) -> None:
    blobs = {f"vendor/lib{i:03}.py": ("0" * 40, 1) for i in range(NEARBY_LIMIT + 50)}
    blobs |= {p: ("0" * 40, 1) for p in ("src/shop/cart.py", "src/shop/tax.py", "src/app.py", "docs/a.md")}
    tree = RepoTree(tmp_path, "f" * 40, blobs, dirs=frozenset({"src", "src/shop", "vendor", "docs"}))
    phase = {"name": "p", "goal": "g", "scope": ["src/shop/cart.py"]}
    spec = RunSpec.model_validate(
        {"repo": str(tmp_path), "config": {"builder": "anthropic"}, "phases": [phase]}
    )
    assert nearby_paths(tree, spec) == ["src/shop/cart.py", "src/shop/tax.py", "src/app.py"]
    assert len(nearby_paths(tree, spec, limit=len(blobs))) == len(blobs)  # a small one: every file


def test_a_draft_whose_api_process_looks_dead_is_charged_once_and_a_late_answer_does_not_count_twice(
    fleet_settings: Settings, api_key: str, shop: Path
) -> None:
    """The reconciler's `abandon_stale` ends a draft still `refining` past the longest call, charging
    its reservation; the call that then answers after all records its usage row, and its settle is
    refused, so the draft's figures count the call once (at its worst case, as a run's orphan is)."""
    done: dict[str, Any] = {}
    sim = MessagesSimulator([Scripted(text=json.dumps(REFINED), usage=USAGE, delay=2.0)])
    with sim, api(with_llm(fleet_settings, sim), api_key) as c:
        worker = threading.Thread(target=lambda: done.update(resp=normalize(c, shop)))
        worker.start()
        while not sim.requests:  # the call is in flight
            time.sleep(0.02)
        with transaction(fleet_settings.database_url) as session:
            abandoned = abandon_stale(session, utcnow() + timedelta(seconds=1))
        (draft,), _ = stored(fleet_settings.database_url)
        worker.join(30)
    assert abandoned == [draft.id] and draft.state == "failed" and draft.error == ABANDONED
    worst = draft.tokens_used
    assert draft.tokens_reserved == 0 and worst > 1834 + 217
    body = done["resp"].json()
    (after,), usage = stored(fleet_settings.database_url)
    assert [(u.plan_draft_id, u.input_tokens, u.output_tokens) for u in usage] == [(draft.id, 1834, 217)]
    assert (after.state, after.error, after.tokens_used, after.tokens_reserved) == (
        "failed",
        ABANDONED,
        worst,
        0,
    )
    assert body["llm"]["state"] == "failed" and body["llm"]["tokens"] == worst


def test_a_draft_reads_back_by_id_for_its_owner_only(
    fleet_settings: Settings, api_key: str, shop: Path
) -> None:
    with transaction(fleet_settings.database_url) as session:
        _, other_key = create_key(session, "someone-else")
    sim = MessagesSimulator([Scripted(text=json.dumps(REFINED), usage=USAGE)])
    with sim, api(with_llm(fleet_settings, sim), api_key) as c:
        made = normalize(c, shop).json()["llm"]
        mine = c.get(f"/plans/drafts/{made['draft_id']}")
        missing = c.get(f"/plans/drafts/{made['draft_id'] + 1}")
    with api(fleet_settings, other_key) as other:
        theirs = other.get(f"/plans/drafts/{made['draft_id']}")
    assert mine.status_code == 200 and mine.json() == made
    assert mine.json()["state"] == "done" and mine.json()["tokens"] == 1834 + 217
    assert missing.status_code == 404 and theirs.status_code == 404
    assert "not found" in theirs.json()["detail"]


def test_the_reconciler_s_scan_for_abandoned_drafts_reads_only_the_drafts_in_flight(pg: str) -> None:
    # Every reconciler pass on every worker runs it; 20,000 finished drafts must not be read each time.
    with transaction(pg) as session:
        session.execute(
            text(
                "INSERT INTO plan_drafts (repo, base_ref, base_sha, model, state, token_budget,"
                " tokens_reserved, tokens_used, created_at)"
                " SELECT 'r', 'main', 'x', 'm', CASE WHEN i % 5000 = 0 THEN 'refining' ELSE 'done' END,"
                " 1000, 0, 0, now() - interval '1 day' FROM generate_series(1, 20000) AS i"
            )
        )
        session.execute(text("ANALYZE plan_drafts"))
    stale = utcnow() - timedelta(hours=1)
    with transaction(pg) as session:
        plan = "\n".join(
            session.scalars(
                text(
                    "EXPLAIN UPDATE plan_drafts SET state = 'failed'"
                    " WHERE state = 'refining' AND created_at < :before"
                ),
                {"before": stale},
            )
        )
        assert "ix_plan_drafts_refining" in plan, plan
        assert "Seq Scan" not in plan, plan
        assert sorted(abandon_stale(session, stale)) == [5000, 10000, 15000, 20000]
