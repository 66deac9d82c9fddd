"""Dashboard sessions and pages over HTTP on real Postgres (no browser; tests/test_dashboard_browser.py
drives one): cookie flags, revocation, owners, CSRF, headers, and every page answering."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.sample_repo import sample_spec
from shared.db import transaction
from shared.keys import create_key, revoke_key
from shared.settings import Settings
from workers.celery_app import create_app as create_celery


@pytest.fixture
def browserless(fleet_settings: Settings) -> TestClient:
    return TestClient(create_app(fleet_settings, create_celery(fleet_settings)), follow_redirects=False)


def log_in(client: TestClient, key: str) -> None:
    form = client.get("/ui/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token is not None
    done = client.post("/ui/login", data={"api_key": key, "csrf_token": token.group(1)})
    assert done.status_code == 303 and done.headers["location"] == "/ui"


def test_a_logged_out_visit_goes_to_login_and_the_session_cookie_never_holds_the_key(
    browserless: TestClient, fleet_settings: Settings
) -> None:
    with transaction(fleet_settings.database_url) as session:
        _, key = create_key(session, "ops", admin=True)
    assert browserless.get("/ui").headers["location"] == "/ui/login"
    log_in(browserless, key)
    page = browserless.get("/ui")
    assert page.status_code == 200 and "Overview" in page.text
    assert key not in str(browserless.cookies.get("autopack_session"))
    assert "default-src 'self'" in page.headers["content-security-policy"]


def test_the_session_cookie_flags_and_a_revoked_key_ends_the_session(
    browserless: TestClient, fleet_settings: Settings
) -> None:
    with transaction(fleet_settings.database_url) as session:
        _, key = create_key(session, "ops", admin=True)
    form = browserless.get("/ui/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token is not None
    done = browserless.post("/ui/login", data={"api_key": key, "csrf_token": token.group(1)})
    flags = done.headers["set-cookie"]
    assert "autopack_session=" in flags and "HttpOnly" in flags and "SameSite=strict" in flags
    assert "Path=/ui" in flags
    assert browserless.get("/ui").status_code == 200
    with transaction(fleet_settings.database_url) as session:
        revoke_key(session, "ops")
    assert browserless.get("/ui").headers["location"] == "/ui/login"


def test_a_wrong_key_or_a_login_without_its_form_token_is_refused(
    browserless: TestClient, fleet_settings: Settings
) -> None:
    with transaction(fleet_settings.database_url) as session:
        _, key = create_key(session, "ops")
    form = browserless.get("/ui/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token is not None
    wrong = browserless.post("/ui/login", data={"api_key": "apk_nope", "csrf_token": token.group(1)})
    assert wrong.status_code == 303 and "error" in wrong.headers["location"]
    forged = browserless.post("/ui/login", data={"api_key": key, "csrf_token": "forged"})
    assert forged.status_code == 403 and "autopack_session" not in forged.headers.get("set-cookie", "")


def test_every_page_answers_for_its_owner_and_hides_other_owners_runs(
    browserless: TestClient, fleet_settings: Settings, sample_repo: Path
) -> None:
    with transaction(fleet_settings.database_url) as session:
        _, mine = create_key(session, "alice")
        _, theirs = create_key(session, "bob")
    runs = TestClient(create_app(fleet_settings, create_celery(fleet_settings)))
    run_id = runs.post("/runs", json=sample_spec(sample_repo, 0), headers={"X-API-Key": theirs}).json()["id"]
    log_in(browserless, mine)
    for path in ("/ui", "/ui/runs", "/ui/runs?state=QUEUED&name=sample", "/ui/campaigns"):
        assert browserless.get(path).status_code == 200, path
    assert "sample-0" not in browserless.get("/ui/runs").text
    assert browserless.get(f"/ui/runs/{run_id}").status_code == 404
    assert browserless.get("/ui/fleet").status_code == 403  # not an admin key
    assert browserless.get("/ui/campaigns/1").status_code == 404
