"""The dashboard in a real browser (Playwright + Debian's Chromium) on a real `autopack api` process,
real `autopack worker` processes, Postgres and Redis. Each test requires that no page logged a
console error; a failing test leaves a screenshot in test-artifacts/."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from api.client import ApiClient
from api.sample_repo import sample_spec
from api.serve import free_port
from shared.db import transaction
from shared.keys import create_key
from shared.settings import Settings
from tests.support.browser import Tab, chromium
from tests.support.procs import api_process, worker_process
from tests.support.scenario import wait_terminal

pytestmark = pytest.mark.fleet


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


@pytest.fixture
def tab(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Tab]:
    context = browser.new_context()
    opened = Tab(context.new_page())
    opened.watch()
    yield opened
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(f"screenshot: {opened.screenshot(request.node.name)}")
    context.close()


@pytest.fixture
def keys(fleet_settings: Settings) -> dict[str, str]:
    with transaction(fleet_settings.database_url) as session:
        _, admin = create_key(session, "ops", admin=True)
        _, other = create_key(session, "bob", owner="team-b")
    return {"admin": admin, "other": other}


@pytest.fixture
def api(fleet_settings: Settings, tmp_path: Path) -> Iterator[str]:
    with api_process(fleet_settings, free_port(), tmp_path) as url:
        yield url


def login(page: Page, url: str, key: str) -> None:
    page.goto(f"{url}/ui/login")
    page.fill("#api_key", key)
    page.click("#login")
    page.wait_for_url(f"{url}/ui")


def text(page: Page, selector: str) -> str:
    return page.locator(selector).inner_text().strip()


def one_phase(repo: Path, name: str, command: str, validation: str, **phase: Any) -> dict[str, Any]:
    body = {"name": "work", "scope": ["src/"], "command": command, "validation": [validation], **phase}
    return {"repo": str(repo), "name": name, "config": {"max_attempts": 1}, "phases": [body]}


def test_a_run_moves_queued_running_done_on_its_page_without_a_reload_and_its_attempt_shows_the_diff(
    tab: Tab, api: str, keys: dict[str, str], fleet_settings: Settings, sample_repo: Path, tmp_path: Path
) -> None:
    page = tab.page
    client = ApiClient(api, keys["admin"])
    run_id = client.submit(sample_spec(sample_repo, 0, sys.executable))["id"]
    page.goto(f"{api}/ui/runs/{run_id}")
    assert page.url == f"{api}/ui/login"  # logged out: the page sends you to log in
    login(page, api, keys["admin"])
    page.goto(f"{api}/ui/runs/{run_id}")
    page.evaluate("window.stillTheSamePage = true")
    seen = [text(page, "#run-state")]
    with worker_process(fleet_settings, "w1", tmp_path):  # only now can it move
        deadline = time.monotonic() + 120
        while seen[-1] not in ("DONE_SUCCESS", "DONE_FAILED") and time.monotonic() < deadline:
            time.sleep(0.2)
            state = text(page, "#run-state")
            if state != seen[-1]:
                seen.append(state)
    assert seen == ["QUEUED", "RUNNING", "DONE_SUCCESS"]
    assert page.evaluate("window.stillTheSamePage") is True  # htmx swapped the part, nobody reloaded
    assert page.locator("#phases .phase.COMPLETE").count() == 3
    page.locator("a.attempt-link").first.click()
    page.wait_for_url(f"{api}/ui/runs/{run_id}/phases/0/attempts/1")
    assert text(page, "#attempt-outcome") == "SUCCESS"
    assert page.locator("#diff .add").count() >= 2 and "def greet" in text(page, "#diff")
    assert "passed" in text(page, "#validation-output")
    assert tab.errors == []


def test_a_failing_run_shows_its_failure_reason_and_the_hardening_advice(
    tab: Tab, api: str, keys: dict[str, str], fleet_settings: Settings, sample_repo: Path, tmp_path: Path
) -> None:
    write = "printf 'import nonexistent_pkg_xyz\\n' > src/uses_dep.py"
    spec = one_phase(
        sample_repo, "needs-a-dep", write, "test ! -e src/uses_dep.py || python3 src/uses_dep.py"
    )
    client = ApiClient(api, keys["admin"])
    with worker_process(fleet_settings, "w1", tmp_path):
        run_id = client.submit(spec)["id"]
        wait_terminal(client, [run_id], timeout=60)
    login(tab.page, api, keys["admin"])
    tab.page.goto(f"{api}/ui/runs/{run_id}")
    assert text(tab.page, "#run-state") == "DONE_FAILED"
    assert "validation failed" in text(tab.page, "#run-failure")
    assert "hardening (missing_python_dependency)" in text(tab.page, "td.advice")
    assert tab.errors == []


def test_the_cancel_button_stops_a_running_run_on_the_page_and_in_the_api(
    tab: Tab, api: str, keys: dict[str, str], fleet_settings: Settings, sample_repo: Path, tmp_path: Path
) -> None:
    spec = one_phase(sample_repo, "slow", "sleep 4; echo x > src/x.txt", "true")
    spec["phases"].append({**spec["phases"][0], "name": "after"})
    client = ApiClient(api, keys["admin"])
    login(tab.page, api, keys["admin"])
    with worker_process(fleet_settings, "w1", tmp_path):
        run_id = client.submit(spec)["id"]
        tab.page.goto(f"{api}/ui/runs/{run_id}")
        expect(tab.page.locator("#run-state")).to_have_text("RUNNING", timeout=30_000)
        tab.page.click("#cancel-run")
        expect(tab.page.locator("#run-state")).to_have_text("CANCELLED", timeout=30_000)
    assert client.run(run_id)["state"] == "CANCELLED"
    assert tab.page.locator("#cancel-run").count() == 0 and tab.page.locator("#rerun-failed").count() == 1
    assert tab.errors == []


def test_a_campaign_page_shows_the_report_chart(
    tab: Tab, api: str, keys: dict[str, str], fleet_settings: Settings, sample_repo: Path, tmp_path: Path
) -> None:
    client = ApiClient(api, keys["admin"])
    spec = one_phase(sample_repo, "quick", "echo x > src/x.txt", "true")
    with worker_process(fleet_settings, "w1", tmp_path):
        sources = [client.submit(spec)["id"] for _ in range(2)]
        wait_terminal(client, sources, timeout=60)
        created = client.create_campaign({"source": {"run_ids": sources}, "mode": "replay", "repeats": 5})
        while client.campaign(created["id"])["state"] == "ACTIVE":
            time.sleep(0.2)
    login(tab.page, api, keys["admin"])
    tab.page.goto(f"{api}/ui/campaigns/{created['id']}")
    chart = tab.page.locator("#report-chart")
    expect(chart).to_have_js_property("complete", True)
    assert chart.evaluate("img => img.naturalWidth") == 720
    assert chart.get_attribute("src", timeout=1000).startswith(f"/ui/campaigns/{created['id']}/report.svg")
    assert text(tab.page, "#campaign-state") == "DONE"
    assert "10 valid" in tab.page.inner_text("#campaign-live")
    assert tab.errors == []


def test_owners_logout_and_csrf_are_enforced(
    tab: Tab, api: str, keys: dict[str, str], fleet_settings: Settings, sample_repo: Path
) -> None:
    admins_run = ApiClient(api, keys["admin"]).submit(one_phase(sample_repo, "ops-run", "true", "true"))["id"]
    login(tab.page, api, keys["other"])
    tab.page.goto(f"{api}/ui/runs")
    assert "ops-run" not in tab.page.inner_text("#runs")  # another owner's run is not listed ...
    response = tab.page.goto(f"{api}/ui/runs/{admins_run}")
    assert response is not None and response.status == 404  # ... nor shown
    forged = tab.page.request.post(f"{api}/ui/runs/{admins_run}/cancel", form={"csrf_token": "forged"})
    bare = tab.page.request.post(f"{api}/ui/runs/{admins_run}/cancel")
    assert forged.status == 403 and bare.status == 403
    assert ApiClient(api, keys["admin"]).run(admins_run)["cancel_requested"] is False
    tab.page.click("#logout")
    tab.page.wait_for_url(f"{api}/ui/login")
    tab.page.goto(f"{api}/ui")
    assert tab.page.url == f"{api}/ui/login"
    tab.errors = [e for e in tab.errors if "404" not in e]  # the refused page's own status line
    assert tab.errors == []
