"""How a phase fails: scope violations, failing validation with retries, missing deliverables, cancels.

Each runs a real spec on the embedded fleet against a real repo and checks both the record and git.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from api.client import ApiClient
from api.serve import api_in_thread
from shared.git import git
from shared.settings import Settings
from tests.support.scenario import wait_terminal
from workers.embedded import embedded_fleet

PY = sys.executable


@pytest.fixture
def client(embedded_settings: Settings) -> Iterator[ApiClient]:
    with embedded_fleet(embedded_settings, 2) as celery, api_in_thread(embedded_settings, celery) as url:
        yield ApiClient(url, None)


def spec(repo: Path, *phases: dict[str, Any], max_attempts: int = 2) -> dict[str, Any]:
    return {
        "repo": str(repo),
        "config": {"builder": "script", "max_attempts": max_attempts},
        "phases": [
            {"name": f"p{i}", "scope": ["src/"], "validation": ["true"], **p} for i, p in enumerate(phases)
        ],
    }


def run_to_end(client: ApiClient, body: dict[str, Any]) -> dict[str, Any]:
    run_id = client.submit(body)["id"]
    return wait_terminal(client, [run_id], timeout=60)[0]


def branch_exists(repo: Path, branch: str) -> bool:
    done = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", branch], capture_output=True
    )
    return done.returncode == 0


def test_write_outside_scope_fails_the_attempt_and_commits_nothing(
    client: ApiClient, sample_repo: Path
) -> None:
    run = run_to_end(client, spec(sample_repo, {"command": "echo x > README.md && echo y > src/ok.py"}))
    phase = run["phases"][0]
    assert run["state"] == "DONE_FAILED"
    assert phase["state"] == "FAILED"
    assert [a["outcome"] for a in phase["attempt_log"]] == ["SCOPE_VIOLATION", "SCOPE_VIOLATION"]
    assert "README.md: outside scope" in phase["attempt_log"][0]["failure_reason"]
    assert phase["commit_sha"] is None
    assert run["head_sha"] == run["base_sha"]
    assert not branch_exists(sample_repo, run["result_branch"])


def test_write_to_a_protected_path_inside_scope_fails_the_attempt(
    client: ApiClient, sample_repo: Path
) -> None:
    body = spec(sample_repo, {"command": "echo '# x' >> src/calc.py", "protected_paths": ["src/calc.py"]})
    run = run_to_end(client, body)
    assert run["phases"][0]["attempt_log"][0]["outcome"] == "SCOPE_VIOLATION"
    assert "src/calc.py: protected path" in run["phases"][0]["failure_reason"]


def test_failing_validation_is_retried_up_to_max_attempts_then_the_run_fails(
    client: ApiClient, sample_repo: Path
) -> None:
    body = spec(
        sample_repo,
        # Passes at the starting commit (the baseline), fails once the phase's change exists.
        {
            "command": "echo 'x = 1' > src/new.py",
            "validation": ["test ! -e src/new.py || (echo checking; exit 3)"],
        },
        {"command": "true"},
        max_attempts=3,
    )
    run = run_to_end(client, body)
    first, second = run["phases"]
    assert run["state"] == "DONE_FAILED"
    assert [a["outcome"] for a in first["attempt_log"]] == ["VALIDATION_FAILED"] * 3
    assert first["attempts"] == 3
    assert "exit 3" in first["failure_reason"] and "checking" in first["failure_reason"]
    assert second["state"] == "SKIPPED"
    assert "phase 0 (p0) failed" in run["failure_reason"]


def test_validation_already_failing_at_the_starting_commit_is_not_a_regression(
    client: ApiClient, sample_repo: Path
) -> None:
    run = run_to_end(
        client, spec(sample_repo, {"command": "echo 'y = 1' > src/y.py", "validation": ["exit 4"]})
    )
    assert run["state"] == "DONE_SUCCESS"


def test_a_phase_without_validation_gets_one_inferred_from_the_toolchain(
    client: ApiClient, sample_repo: Path
) -> None:
    body = spec(sample_repo, {"command": "echo 'z = 1' > src/z.py"})
    body["phases"][0].pop("validation")
    run = run_to_end(client, body)
    attempt = run["phases"][0]["attempt_log"][0]
    assert run["state"] == "DONE_SUCCESS"
    assert attempt["outcome"] == "SUCCESS"


def test_a_phase_that_fails_once_then_passes_succeeds_on_the_retry(
    client: ApiClient, sample_repo: Path
) -> None:
    # The attempt number reaches the command, so the first try can fail and the second succeed.
    body = spec(sample_repo, {"command": 'test "$AUTOPACK_ATTEMPT" -ge 2 && echo ok > src/ok.py'})
    run = run_to_end(client, body)
    assert run["state"] == "DONE_SUCCESS"
    assert [a["outcome"] for a in run["phases"][0]["attempt_log"]] == ["BUILD_FAILED", "SUCCESS"]


def test_missing_deliverable_fails_the_attempt_with_its_name(client: ApiClient, sample_repo: Path) -> None:
    body = spec(sample_repo, {"command": "echo x > src/a.py", "deliverables": ["src/a.py", "src/b.py"]})
    run = run_to_end(client, body)
    attempt = run["phases"][0]["attempt_log"][0]
    assert attempt["outcome"] == "MISSING_DELIVERABLE"
    assert attempt["failure_reason"] == "missing deliverables: src/b.py"


def test_validation_leftovers_are_not_committed(client: ApiClient, sample_repo: Path) -> None:
    body = spec(sample_repo, {"command": "echo 'v = 2' > src/v.py", "validation": ["touch src/leftover.txt"]})
    run = run_to_end(client, body)
    assert run["state"] == "DONE_SUCCESS"
    files = subprocess.run(
        ["git", "-C", str(sample_repo), "show", "--name-only", "--format=", run["result_branch"]],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert files == ["src/v.py"]


def test_cancel_of_a_running_run_stops_it_before_the_next_phase(client: ApiClient, sample_repo: Path) -> None:
    body = spec(sample_repo, {"command": "sleep 2; echo a > src/a.py"}, {"command": "echo b > src/b.py"})
    run_id = client.submit(body)["id"]
    wait_for_state(client, run_id, "RUNNING")
    assert client.cancel(run_id)["cancel_requested"] is True
    run = wait_terminal(client, [run_id], timeout=60)[0]
    assert run["state"] == "CANCELLED"
    assert run["phases"][1]["state"] == "CANCELLED"
    assert run["phases"][1]["attempt_log"] == []
    # Phase 0 completed before the cancel was seen: the reconciler moves the branch to its commit and
    # drops the phase ref that kept the commit reachable until then.
    head = run["phases"][0]["commit_sha"]
    assert run["phases"][0]["state"] == "COMPLETE" and head
    deadline = time.monotonic() + 15
    while origin_refs(sample_repo, f"refs/autopack/run-{run_id}/") or not branch_exists(
        sample_repo, run["result_branch"]
    ):
        assert time.monotonic() < deadline, origin_refs(sample_repo, f"refs/autopack/run-{run_id}/")
        time.sleep(0.2)
    assert origin_refs(sample_repo, f"refs/heads/{run['result_branch']}") == [head]


def origin_refs(repo: Path, prefix: str) -> list[str]:
    return git("for-each-ref", "--format=%(objectname)", prefix, cwd=repo).split()


def wait_for_state(client: ApiClient, run_id: int, state: str) -> None:
    deadline = time.monotonic() + 30
    while client.run(run_id)["state"] != state:
        assert time.monotonic() < deadline, f"run {run_id} never reached {state}"
        time.sleep(0.05)


def test_builder_command_does_not_see_worker_secrets(
    client: ApiClient, sample_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTOPACK_API_KEY", "apk_secret_value")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-secret")
    body = spec(
        sample_repo,
        {"command": f"{PY} -c \"import os; open('src/env.txt','w').write(repr(dict(os.environ)))\""},
    )
    run = run_to_end(client, body)
    assert run["state"] == "DONE_SUCCESS"
    shown = subprocess.run(
        ["git", "-C", str(sample_repo), "show", f"{run['result_branch']}:src/env.txt"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "apk_secret_value" not in shown and "sk-ant-secret" not in shown
    assert "AUTOPACK_ATTEMPT" in shown


def test_replay_of_a_script_run_re_applies_its_staged_diffs(client: ApiClient, sample_repo: Path) -> None:
    source = run_to_end(
        client, spec(sample_repo, {"command": "echo 'k = 1' > src/k.py"}, {"command": "rm src/calc.py"})
    )
    assert source["state"] == "DONE_SUCCESS"
    body = spec(sample_repo, {"command": "false"}, {"command": "false"})
    body["config"] = {"builder": "replay", "replay_of": source["id"]}
    replay = run_to_end(client, body)
    assert replay["state"] == "DONE_SUCCESS"
    assert [p["attempt_log"][0]["changed_paths"] for p in replay["phases"]] == [["src/k.py"], ["src/calc.py"]]
    trees = {
        subprocess.run(
            ["git", "-C", str(sample_repo), "rev-parse", f"{r['result_branch']}^{{tree}}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        for r in (source, replay)
    }
    assert len(trees) == 1
