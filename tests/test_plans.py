"""Markdown plans become run spec drafts (`shared/plans`, `POST /plans/normalize`, `autopack plan
normalize`): three real-looking plans against real git repositories, the 422s, and the draft accepted
by `POST /runs` as it is."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from fastapi.testclient import TestClient

from api import cli, plan_cli
from api.client import ApiClient
from shared.errors import InvalidSpec
from shared.git import git
from shared.plans.draft import Draft, normalize_plan
from shared.plans.parse import clean_title, parse_plan
from shared.settings import Settings
from tests.conftest import TEMP_REPOS

PYTHON_REPO = {
    "pyproject.toml": "[project]\nname = 'shop'\n\n[tool.pytest.ini_options]\npythonpath = ['src']\n",
    "src/shop/__init__.py": "",
    "src/shop/cart.py": "def total(items):\n    return sum(items)\n",
    "src/shop/pricing.py": "RATE = 0.2\n",
    "tests/test_cart.py": "from shop.cart import total\n\ndef test_total():\n    assert total([1]) == 1\n",
    "tests/shop/test_pricing.py": "def test_rate():\n    pass\n",
    "docs/index.md": "# Shop\n",
}
GO_REPO = {
    "go.mod": "module example.com/api\n\ngo 1.22\n",
    "internal/http/client.go": "package http\n",
    "internal/http/client_test.go": "package http\n",
    "internal/http/retry.go": "package http\n",
    "cmd/api/main.go": "package main\n",
}

HEADINGS_PLAN = """\
# Discounts for the shop

Context: pricing lives in `src/shop/pricing.py` today.

## Phase 1: Discount rules
Teach `src/shop/pricing.py` percentage discounts.

```python
# Phase 9: not a heading, and `src/shop/nothing.py` is not a mention
```

## Phase 2: Apply discounts in the cart
Use them in `src/shop/cart.py`.
Add a test module `tests/test_discounts.py` for the cart totals.

## Phase 3: Document it
Create `docs/discounts.md` and link it from `docs/index.md`.
"""

NESTED_PLAN = """\
# Retries for the HTTP client

1. Add retry with backoff
   - in `internal/http/client.go`, wrap `Do`
   - reuse the helpers:
     - `internal/http/retry.go`
2. Expose a flag
   - `cmd/api/main.go` gets `--retries`
   - add `internal/http/config.go` holding the defaults
"""

MISSING_PATHS_PLAN = """\
# Cleanup

## Remove the legacy cart
Delete `src/shop/legacy_cart.py` and its uses in `src/shop/cart.py`.

## Tidy helpers
Move `src/shop/helpers/` functions next to their callers; see `lib/util.py`.
"""


def make_repo(path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(text)
    git("init", "--quiet", "--initial-branch=main", cwd=path)
    git("add", "--all", cwd=path)
    git("-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "--quiet", "-m", "init", cwd=path)
    return path


@pytest.fixture(scope="module")
def py_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repo(tmp_path_factory.mktemp("py") / "shop", PYTHON_REPO)


@pytest.fixture(scope="module")
def go_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repo(tmp_path_factory.mktemp("go") / "api", GO_REPO)


SETTINGS = Settings(allowed_repos=[TEMP_REPOS], _env_file=None)  # type: ignore[call-arg]
MAX = SETTINGS.max_phases_per_run
TOO_MANY = "".join(f"{i}. Tidy `src/shop/cart.py`\n" for i in range(1, MAX + 2))


def draft(plan: str, repo: Path) -> Draft:
    return normalize_plan(plan, repo=str(repo), base_ref="main", name=None, settings=SETTINGS)


def warned(d: Draft) -> list[tuple[str | None, int | None, str]]:
    return [(w.field, w.line, w.message) for w in d.warnings]


def test_numbered_headings_make_phases_with_scope_tests_deliverables_and_validation(py_repo: Path) -> None:
    d = draft(HEADINGS_PLAN, py_repo)
    sha = git("rev-parse", "main", cwd=py_repo).strip()
    phases = d.spec.phases
    assert [p.name for p in phases] == ["discount-rules", "apply-discounts-in-the-cart", "document-it"]
    assert d.spec.name == "Discounts for the shop" and d.spec.config.builder == "anthropic"
    assert phases[0].goal.startswith("Phase 1: Discount rules\n\nTeach `src/shop/pricing.py`")
    assert phases[0].scope == ["src/shop/pricing.py", "tests/shop/test_pricing.py"]  # a fence is no mention
    assert phases[1].scope == ["src/shop/cart.py", "tests/test_discounts.py", "tests/test_cart.py"]
    assert phases[1].deliverables == ["tests/test_discounts.py"]
    assert phases[2].scope == ["docs/discounts.md", "docs/index.md"]
    assert phases[2].deliverables == ["docs/discounts.md"]
    assert all(p.validation == ["python -m pytest -q"] for p in phases)
    prov = d.provenance
    assert prov["phases.0.scope.0"] == f"mentioned in line 6: `src/shop/pricing.py` (exists at {sha[:12]})"
    assert prov["phases.0.scope.1"] == f"test file of src/shop/pricing.py (exists at {sha[:12]})"
    assert prov["phases.1.deliverables.0"].startswith(
        "mentioned in line 14: `tests/test_discounts.py`, to be"
    )
    assert prov["phases.0.validation.0"] == f"inferred pytest from pyproject.toml [tool.pytest] at {sha[:12]}"
    assert prov["base_ref"] == f"resolved to {sha}" and prov["name"] == "the plan's title, line 1"
    assert (None, 3, "`src/shop/pricing.py` is mentioned outside any phase; not used") in warned(d)
    assert not [w for w in d.warnings if w.field and ".scope" in w.field]


def test_nested_lists_stay_in_their_numbered_item(go_repo: Path) -> None:
    d = draft(NESTED_PLAN, go_repo)
    first, second = d.spec.phases
    assert [first.name, second.name] == ["add-retry-with-backoff", "expose-a-flag"]
    assert first.scope == [
        "internal/http/client.go",
        "internal/http/retry.go",
        "internal/http/client_test.go",
    ]
    assert (
        "     - `internal/http/retry.go`" not in first.goal and "  - `internal/http/retry.go`" in first.goal
    )
    assert second.scope == ["cmd/api/main.go", "internal/http/config.go"]
    assert second.deliverables == ["internal/http/config.go"]
    assert first.validation == ["go test ./..."]
    assert d.provenance["phases.0.scope.1"].startswith("mentioned in line 6: `internal/http/retry.go`")
    assert d.provenance["phases.0.validation.0"].startswith("inferred go test ./... from go.mod at ")


def test_paths_that_do_not_exist_are_warnings_not_scope(py_repo: Path) -> None:
    d = draft(MISSING_PATHS_PLAN, py_repo)
    sha = git("rev-parse", "main", cwd=py_repo).strip()[:12]
    remove, tidy = d.spec.phases
    assert remove.scope == ["src/shop/cart.py", "tests/test_cart.py"] and remove.deliverables == []
    assert tidy.scope == ["src/shop/cart.py", "tests/test_cart.py"]  # it named nothing that exists
    assert d.provenance["phases.1.scope.0"] == "no path in this phase; phase 0's scope"
    missing = f"does not exist at {sha} and no create/add sentence names it; not in scope"
    assert ("phases.0.scope", 4, f"`src/shop/legacy_cart.py` {missing}") in warned(d)
    assert ("phases.1.scope", 7, f"`src/shop/helpers/` {missing}") in warned(d)
    assert ("phases.1.scope", 7, f"`lib/util.py` {missing}") in warned(d)
    assert ("phases.1.scope", 6, "no path named in this phase: scope is the other phases' scope") in warned(d)


@pytest.mark.parametrize(
    ("plan", "line", "words"),
    [
        (
            "# Ideas\n\nSome prose.\n\n- one `src/shop/cart.py`\n- two\n",
            5,
            "a bulleted list is not a phase list",
        ),
        ("# Ideas\n\nJust prose about `src/shop/cart.py`.\n", 1, "expected numbered items"),
        ("\n\n", 1, "the plan is empty"),
        (TOO_MANY, MAX + 1, f"at most {MAX} phases"),
        ("1. Think hard about `nothing/here.py`\n", 1, "names no path that exists"),
    ],
)
def test_a_plan_without_phases_or_scope_is_refused_naming_the_line(
    py_repo: Path, plan: str, line: int, words: str
) -> None:
    with pytest.raises(InvalidSpec) as caught:
        draft(plan, py_repo)
    assert caught.value.field == "plan"
    assert caught.value.message.startswith(f"line {line}: ") and words in caught.value.message


def test_the_repo_must_be_allowed_and_the_ref_must_resolve(py_repo: Path, tmp_path: Path) -> None:
    strict = Settings(allowed_repos=["/nowhere/**"], _env_file=None)  # type: ignore[call-arg]
    with pytest.raises(InvalidSpec, match="not an allowed repository"):
        normalize_plan(NESTED_PLAN, repo=str(py_repo), base_ref="main", name=None, settings=strict)
    with pytest.raises(InvalidSpec) as caught:
        normalize_plan(NESTED_PLAN, repo=str(py_repo), base_ref="nope", name=None, settings=SETTINGS)
    assert caught.value.field == "base_ref"


# --- over HTTP, on Postgres --------------------------------------------------------------------------


def test_the_api_draft_is_accepted_by_post_runs_as_it_is(client: TestClient, py_repo: Path) -> None:
    resp = client.post("/plans/normalize", json={"repo": str(py_repo), "plan": HEADINGS_PLAN, "name": "d"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["spec"]["name"] == "d" and "name" not in body["provenance"]
    assert body["provenance"]["phases.2.deliverables.0"].startswith(
        "mentioned in line 17: `docs/discounts.md`"
    )
    assert {"field": "config", "line": None}.items() <= body["warnings"][0].items()
    run = client.post("/runs", json=body["spec"])
    assert run.status_code == 201, run.text
    assert [p["name"] for p in run.json()["phases"]] == [p["name"] for p in body["spec"]["phases"]]


def test_the_api_names_the_line_of_a_plan_without_phases(client: TestClient, py_repo: Path) -> None:
    resp = client.post("/plans/normalize", json={"repo": str(py_repo), "plan": "# T\n\n- a\n- b\n"})
    assert resp.status_code == 422
    (detail,) = resp.json()["detail"]
    assert detail["loc"] == ["body", "plan"] and detail["msg"].startswith("line 3: no phases")
    anonymous = client.post(
        "/plans/normalize", json={"repo": str(py_repo), "plan": NESTED_PLAN}, headers={"X-API-Key": ""}
    )
    assert anonymous.status_code == 401


def test_the_cli_prints_yaml_and_warnings_apart(
    client: TestClient, go_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = ApiClient("http://testserver", None)
    api._http = client
    monkeypatch.setattr(plan_cli, "settings_client", lambda: api)
    plan_file = tmp_path / "plan.md"
    plan_file.write_text(NESTED_PLAN)
    result = CliRunner().invoke(cli.cli, ["plan", "normalize", str(plan_file), "--repo", str(go_repo)])
    assert result.exit_code == 0, result.output
    spec = yaml.safe_load(result.stdout)
    assert spec["repo"] == str(go_repo.resolve())
    assert [p["name"] for p in spec["phases"]] == ["add-retry-with-backoff", "expose-a-flag"]
    assert "warning: config: not inferred" in result.stderr and "warning:" not in result.stdout
    assert client.post("/runs", json=spec).status_code == 201
    empty = tmp_path / "empty.md"
    empty.write_text("nothing here\n")
    refused = CliRunner().invoke(cli.cli, ["plan", "normalize", str(empty), "--repo", str(go_repo)])
    assert refused.exit_code == 1 and "line 1: no phases" in refused.stderr


def test_parse_counts_lines_as_markdown_does_and_reads_setext_and_step_titles() -> None:
    text = "Plan\r\n====\r\n\r\nStep 1\r\n------\r\nEdit `a.py`\u2028still line 6\r\n\r\n"
    plan = parse_plan(text + "Step 2\r\n------\r\n")
    assert [(i.title, i.line) for i in plan.items] == [("Step 1", 4), ("Step 2", 8)]
    assert plan.title == "Plan" and plan.items[0].text == "Step 1\n\nEdit `a.py`\u2028still line 6"
    assert plan.items[0].mentions[0].line == 6 and clean_title("Phase 2: Add x") == "Add x"
