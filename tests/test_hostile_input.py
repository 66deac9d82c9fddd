"""Hostile input at the API: oversized bodies, oversized specs, and repositories outside the allowlist."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from api.app import create_app
from api.sample_repo import sample_spec
from shared.admission import CHECKOUT, check_repo, pattern_regex
from shared.errors import InvalidSpec
from shared.settings import Settings
from workers.celery_app import create_app as create_celery


def run_count(url: str) -> int:
    with sa.create_engine(url, poolclass=sa.pool.NullPool).connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM runs")).scalar_one())


@pytest.fixture
def small(fleet_settings: Settings, api_key: str) -> Iterator[TestClient]:
    """The API with small limits, so a test need not send megabytes."""
    limits = {
        "max_body_bytes": 8000,
        "max_phases_per_run": 2,
        "max_list_items": 3,
        "max_string_chars": 200,
        "max_goal_chars": 300,
    }
    settings = fleet_settings.model_copy(update=limits)
    with TestClient(create_app(settings, create_celery(settings)), headers={"X-API-Key": api_key}) as c:
        yield c


def loc_of(resp: Any) -> list[Any]:
    assert resp.status_code == 422, resp.text
    loc: list[Any] = resp.json()["detail"][0]["loc"]
    return loc


def one_phase(repo: Path) -> dict[str, Any]:
    spec = sample_spec(repo, 0)
    spec["phases"] = spec["phases"][:1]
    spec["phases"][0]["validation"] = ["true"]
    return spec


# --- body size -------------------------------------------------------------------------------------------


def test_a_body_over_the_limit_is_413_and_stores_nothing(
    small: TestClient, sample_repo: Path, fleet_settings: Settings
) -> None:
    spec = one_phase(sample_repo) | {"padding": "x" * 9000}
    resp = small.post("/runs", json=spec)
    assert resp.status_code == 413
    assert "8000 bytes" in resp.json()["detail"]
    assert run_count(fleet_settings.database_url) == 0


def test_a_chunked_body_over_the_limit_is_413_without_a_content_length(small: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(20):
            yield b" " * 1000

    resp = small.post("/runs", content=chunks(), headers={"content-type": "application/json"})
    assert resp.status_code == 413


def test_a_body_within_the_limit_is_read_whole(small: TestClient, sample_repo: Path) -> None:
    resp = small.post("/runs", json=one_phase(sample_repo))
    assert resp.status_code == 201, resp.text


def test_deeply_nested_json_is_a_client_error_not_a_server_error(client: TestClient) -> None:
    body = b"[" * 200_000 + b"]" * 200_000  # deep enough to exhaust the JSON parser's recursion
    resp = client.post("/runs", content=body, headers={"content-type": "application/json"})
    assert resp.status_code in (400, 422), resp.text


# --- spec sizes from settings -------------------------------------------------------------------------------


def test_more_phases_than_the_setting_allows_is_422_on_phases(small: TestClient, sample_repo: Path) -> None:
    spec = sample_spec(sample_repo, 0)  # three phases; the limit is two
    assert loc_of(small.post("/runs", json=spec)) == ["body", "phases"]


@pytest.mark.parametrize(
    ("mutate", "loc"),
    [
        (lambda p: p.update(scope=[f"src/f{i}.py" for i in range(4)]), ["phases", 0, "scope"]),
        (lambda p: p.update(validation=["true"] * 4), ["phases", 0, "validation"]),
        (lambda p: p.update(command="x" * 201), ["phases", 0, "command"]),
        (lambda p: p.update(deliverables=["d" * 201]), ["phases", 0, "deliverables", 0]),
        (lambda p: p.update(goal="g" * 301), ["phases", 0, "goal"]),
    ],
)
def test_a_list_or_string_over_its_setting_is_422_naming_the_field(
    small: TestClient, sample_repo: Path, fleet_settings: Settings, mutate: Any, loc: list[Any]
) -> None:
    spec = one_phase(sample_repo)
    mutate(spec["phases"][0])
    assert loc_of(small.post("/runs", json=spec)) == ["body", *loc]
    assert run_count(fleet_settings.database_url) == 0


def test_a_goal_may_be_longer_than_other_strings(small: TestClient, sample_repo: Path) -> None:
    spec = one_phase(sample_repo)
    spec["phases"][0]["goal"] = "g" * 300
    assert small.post("/runs", json=spec).status_code == 201


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"max_tokens": 10**30}, "max_tokens"),
        ({"max_usd": 1e300}, "max_usd"),
        ({"replay_of": 2**40}, "replay_of"),
    ],
)
def test_numbers_the_database_cannot_hold_are_422_naming_the_field(
    client: TestClient, sample_repo: Path, config: dict[str, Any], field: str
) -> None:
    spec = sample_spec(sample_repo, 0)
    spec["config"].update(config)
    assert loc_of(client.post("/runs", json=spec))[-1] == field


@pytest.mark.parametrize(
    "path", ["/runs/2147483648", "/runs/2147483648/cancel", "/runs/99999999999999999999/metrics"]
)
def test_an_id_beyond_32_bits_is_422_not_a_database_error(client: TestClient, path: str) -> None:
    resp = client.post(path) if path.endswith("cancel") else client.get(path)
    assert resp.status_code == 422
    assert client.get("/runs", params={"cursor": 2**40}).status_code == 422


# --- repositories -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "repo",
    [
        "/etc",
        "file:///etc",
        str(CHECKOUT),
        str(CHECKOUT / "shared"),
        "/",
        "ext::sh -c touch% /tmp/pwned",
        "https://example.com/acme/app.git",
    ],
)
def test_a_repo_outside_the_allowlist_is_422_on_repo(
    client: TestClient, fleet_settings: Settings, tmp_path: Path, repo: str
) -> None:
    spec = sample_spec(tmp_path, 0) | {"repo": repo}
    assert loc_of(client.post("/runs", json=spec)) == ["body", "repo"]
    assert run_count(fleet_settings.database_url) == 0


def test_the_workspace_dir_is_refused_even_where_patterns_allow_it(
    client: TestClient, fleet_settings: Settings
) -> None:
    spec = sample_spec(fleet_settings.workspace_dir / "mirrors" / "x", 0)
    resp = client.post("/runs", json=spec)
    assert loc_of(resp) == ["body", "repo"]
    assert "workspace" in resp.json()["detail"][0]["msg"]


def test_a_symlink_is_judged_by_where_it_points(client: TestClient, tmp_path: Path) -> None:
    (tmp_path / "innocent").symlink_to("/etc")
    spec = sample_spec(tmp_path / "innocent", 0)
    resp = client.post("/runs", json=spec)
    assert loc_of(resp) == ["body", "repo"]
    assert "/etc is not an allowed repository" in resp.json()["detail"][0]["msg"]


def test_a_fleet_allows_no_repository_until_the_operator_lists_some(tmp_path: Path) -> None:
    fleet = Settings(broker_url="redis://x:6379/0", _env_file=None)  # type: ignore[call-arg]
    with pytest.raises(InvalidSpec, match="AUTOPACK_ALLOWED_REPOS"):
        check_repo(str(tmp_path), fleet)


def test_the_embedded_default_allows_temp_dirs_and_dot_autopack_only(tmp_path: Path) -> None:
    embedded = Settings(_env_file=None)  # type: ignore[call-arg]
    check_repo(str(tmp_path / "repo"), embedded)
    check_repo(str(Path(".autopack/demo/sample-repo")), embedded)
    with pytest.raises(InvalidSpec):
        check_repo(str(Path.home() / "code"), embedded)


def test_url_patterns_allow_an_organisation_but_no_lookalike_or_escape() -> None:
    settings = Settings(
        broker_url="redis://x:6379/0",
        allowed_repos="https://github.com/acme/**, git@github.com:acme/**",
        _env_file=None,  # type: ignore[call-arg]
    )
    check_repo("https://github.com/acme/app.git", settings)
    check_repo("git@github.com:acme/app.git", settings)
    check_repo("https://github.com/acme/team/app.git", settings)
    for bad in (
        "https://github.com/acme/app/../../evil/x",
        "https://github.com/acme/%2E%2E/%2e%2e/evil/app",
        "https://github.com/acme/app?next=x",
        "git@github.com:acme/../evil/app",
        "https://github.com/acme-evil/app",
        "https://github.com/evil/acme/app",
        "https://user:token@github.com/acme/app",
        "ftp://github.com/acme/app",
    ):
        with pytest.raises(InvalidSpec):
            check_repo(bad, settings)


def test_a_star_stays_within_one_path_part_and_a_double_star_crosses_them() -> None:
    assert pattern_regex("/srv/*").fullmatch("/srv/a")
    assert not pattern_regex("/srv/*").fullmatch("/srv/a/b")
    assert pattern_regex("/srv/**").fullmatch("/srv/a/b")
    assert not pattern_regex("/srv/a.b").fullmatch("/srv/axb")
