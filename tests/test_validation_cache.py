"""Validation paid once per tree: the store's key, what is never stored, the fingerprint, a multi-phase
run whose later baselines come from the store (counted from outside the worker), and slot affinity."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

import workers.validation_cache as vc
from api.client import ApiClient
from api.serve import api_in_thread
from shared import validation_cache as store
from shared.db import transaction
from shared.models import Attempt, ValidationResult
from shared.settings import Settings
from tests.support.scenario import wait_terminal
from workers import commands
from workers.commands import policy_from
from workers.embedded import embedded_fleet
from workers.sandbox import Backend, backend_for
from workers.validation import CommandValidation, JUnitCounts, ValidationRun, run_validation
from workers.workspace import WorkspaceManager
from workers.workspace.pool import slot_head

TREE_A, TREE_B, FP = "a" * 40, "b" * 40, "f" * 64


def result(command: str, exit_code: int = 0, **kw: Any) -> CommandValidation:
    return CommandValidation(
        command, exit_code, kw.pop("output", "out"), 0.5, kw.pop("timed_out", False), **kw
    )


def entries(*results: CommandValidation) -> list[store.Entry]:
    return vc._entries(ValidationRun(tuple(results)))


# --- the store -------------------------------------------------------------------------------------


def test_a_recorded_run_is_found_for_the_same_tree_commands_and_fingerprint(db_url: str) -> None:
    failing = result("pytest", 1, counts=JUnitCounts(3, 1, 0, 0), failing_ids=frozenset({"t::x"}))
    store.record(db_url, TREE_A, FP, entries(result("make lint"), failing))
    rows = store.lookup(db_url, TREE_A, FP, ["make lint", "pytest"])
    assert rows is not None
    back = [vc.from_row(c, r) for c, r in zip(["make lint", "pytest"], rows, strict=True)]
    assert back[0].ok and back[1].exit_code == 1
    assert back[1].counts == JUnitCounts(3, 1, 0, 0) and back[1].failing_ids == {"t::x"}
    with transaction(db_url) as session:
        assert session.scalars(select(ValidationResult.hits)).all() == [1, 1]


def test_a_changed_tree_command_order_or_fingerprint_misses(db_url: str) -> None:
    store.record(db_url, TREE_A, FP, entries(result("make lint"), result("pytest")))
    assert store.lookup(db_url, TREE_B, FP, ["make lint", "pytest"]) is None  # changed tree
    assert store.lookup(db_url, TREE_A, FP, ["make lint", "pytest -x"]) is None  # changed command
    assert store.lookup(db_url, TREE_A, "e" * 64, ["make lint", "pytest"]) is None  # other box/toolchain
    # `pytest` alone never ran on a tree that `make lint` had not touched first: all or nothing.
    assert store.lookup(db_url, TREE_A, FP, ["pytest"]) is None
    assert store.lookup(db_url, TREE_A, FP, ["make lint"]) is not None
    # A partial hit (the first command stored, the second changed) served nothing, so counted nothing:
    # only the last lookup's hit is on the rows.
    with transaction(db_url) as session:
        assert sorted(session.scalars(select(ValidationResult.hits)).all()) == [0, 1]


def test_a_second_writer_of_the_same_result_keeps_the_first_row(db_url: str) -> None:
    store.record(db_url, TREE_A, FP, entries(result("pytest", 1)))
    store.record(db_url, TREE_A, FP, entries(result("pytest", 0)))
    rows = store.lookup(db_url, TREE_A, FP, ["pytest"])
    assert rows is not None and rows[0]["exit_code"] == 1


def test_timeouts_and_killed_commands_are_never_stored_nor_what_ran_after_them() -> None:
    timed_out = result("slow", 124, timed_out=True)
    killed = result("hog", 137, limit="killed: memory limit 2048 MiB")
    cut = result("chatty", 0, limit="output cut: 10 bytes dropped")
    assert [e.command for e in entries(result("a"), timed_out, result("b"))] == ["a"]
    assert entries(killed, result("b")) == []
    assert [e.command for e in entries(cut)] == ["chatty"]


def test_a_real_timeout_is_not_cached(sqlite_url: str, tmp_path: Path) -> None:
    settings = Settings(database_url=sqlite_url, _env_file=None)
    run = run_validation(["sleep 5"], tmp_path, timeout=0.5, max_bytes=1000)
    assert run.results[0].timed_out
    assert vc.remember(settings, TREE_A, run, network=False) == 0
    assert store.lookup(sqlite_url, TREE_A, vc.fingerprint(settings, False), ["sleep 5"]) is None


def test_stored_output_is_a_capped_tail() -> None:
    row = vc.to_row(result("pytest", 1, output="x" * 10_000 + "END"))
    assert len(row["output_tail"]) == vc.OUTPUT_TAIL_BYTES and row["output_tail"].endswith("END")


# --- the fingerprint -------------------------------------------------------------------------------


def fingerprint_under(monkeypatch: pytest.MonkeyPatch, network: bool = False, **overrides: Any) -> str:
    settings = Settings(_env_file=None, **overrides)
    backend: Backend = backend_for(policy_from(settings))
    monkeypatch.setattr(vc, "default_backend", lambda: backend)
    return vc.fingerprint(settings, network)


def test_the_fingerprint_changes_with_the_sandbox_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    base = fingerprint_under(monkeypatch)
    assert fingerprint_under(monkeypatch) == base  # stable: a worker finds its own results again
    assert fingerprint_under(monkeypatch, workspace_dir=Path("/elsewhere")) == base  # hidden, never seen
    for changed in (
        {"sandbox": "none"},
        {"sandbox_memory_mb": 1024},
        {"sandbox_max_processes": 64},
        {"sandbox_uid": 1234},
        {"sandbox_read_only_paths": [Path("/srv/toolchain")]},
        {"command_timeout_seconds": 60},
    ):
        assert fingerprint_under(monkeypatch, **changed) != base, changed
    # The network only counts when the phase asks for it and the operator allows it.
    assert fingerprint_under(monkeypatch, network=True) == base
    allowed = fingerprint_under(monkeypatch, phase_network="allow")
    assert fingerprint_under(monkeypatch, network=True, phase_network="allow") != allowed


def test_the_fingerprint_changes_with_the_toolchain(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    base = fingerprint_under(monkeypatch)
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python3").write_text("#!/bin/sh\n")
    (fake / "python3").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    assert fingerprint_under(monkeypatch) != base


# --- a multi-phase run, observed from outside ------------------------------------------------------


@pytest.fixture
def restore_sandbox() -> Iterator[None]:
    """The embedded fleet configures this process's sandbox; put back what other tests had."""
    saved = list(commands._configured)
    yield
    commands._configured[:] = saved
    commands.default_backend.cache_clear()


def unboxed(settings: Settings, cache: bool) -> Settings:
    # Unboxed so the validation command can append to a log outside the worktree: each line is one
    # execution, counted without trusting the worker's own record.
    return settings.model_copy(update={"sandbox": "none", "validation_cache": cache})


def three_phases(repo: Path, log: Path) -> dict[str, Any]:
    check = f"echo ran >> {log} && test -f README.md"
    return {
        "repo": str(repo),
        "config": {"builder": "script", "max_attempts": 1},
        "phases": [
            {"name": f"p{i}", "scope": ["src/"], "command": f"echo {i} > src/f{i}.py", "validation": [check]}
            for i in range(3)
        ],
    }


def run_specs(settings: Settings, specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs one after the other, each to its end."""
    out = []
    with embedded_fleet(settings, 2) as celery, api_in_thread(settings, celery) as url:
        client = ApiClient(url, None)
        for spec in specs:
            out += wait_terminal(client, [client.submit(spec)["id"]], timeout=60)
    return out


def run_twice(settings: Settings, repo: Path, log: Path) -> list[dict[str, Any]]:
    """The same run twice, one after the other: the second is a replay over the same base commit."""
    return run_specs(settings, [three_phases(repo, log)] * 2)


def executions(log: Path) -> int:
    return len(log.read_text().splitlines())


def attempt_notes() -> Any:
    return select(Attempt.validation_output).order_by(Attempt.id)


@pytest.mark.usefixtures("restore_sandbox")
def test_later_baselines_of_a_run_and_every_validation_of_its_replay_come_from_the_store(
    embedded_settings: Settings, sample_repo: Path, tmp_path: Path
) -> None:
    log = tmp_path / "executions.log"
    settings = unboxed(embedded_settings, cache=True)
    runs = run_twice(settings, sample_repo, log)
    assert [r["state"] for r in runs] == ["DONE_SUCCESS", "DONE_SUCCESS"]
    # First run: baseline + after of p0, then only the after of p1 and p2 (their baselines are the
    # afters of p0 and p1). The replay builds the same trees: every baseline and every after is a hit.
    assert executions(log) == 2 + 1 + 1
    with transaction(settings.database_url) as session:
        rows = session.execute(select(func.count(), func.sum(ValidationResult.hits))).one()
        notes = session.scalars(attempt_notes()).all()
    assert tuple(rows) == (4, 2 + 3 + 3)  # four trees (base, after p0, p1, p2); 5 baselines, 3 afters
    reused = ["reused from an earlier validation" in (n or "") for n in notes]
    assert reused == [False, True, True, True, True, True]
    not_run = ["passed these 1 command(s) before" in (n or "") for n in notes]
    assert not_run == [False, False, False, True, True, True]


def unchanged(repo: Path, check: str) -> dict[str, Any]:
    """One phase whose command changes no file: the change's tree is the starting tree."""
    return {
        "repo": str(repo),
        "config": {"builder": "script", "max_attempts": 1},
        "phases": [{"name": "same", "scope": ["src/"], "command": "true", "validation": [check]}],
    }


@pytest.mark.usefixtures("restore_sandbox")
def test_a_change_that_leaves_the_tree_as_it_was_reads_its_validation_from_the_baseline(
    embedded_settings: Settings, sample_repo: Path, tmp_path: Path
) -> None:
    log = tmp_path / "executions.log"
    passing = unchanged(sample_repo, f"echo ran >> {log} && test -f README.md")
    runs = run_specs(unboxed(embedded_settings, cache=True), [passing])
    assert [r["state"] for r in runs] == ["DONE_SUCCESS"]
    assert executions(log) == 1  # the baseline only


@pytest.mark.usefixtures("restore_sandbox")
def test_a_tree_that_failed_its_validation_before_is_validated_again(
    embedded_settings: Settings, sample_repo: Path, tmp_path: Path
) -> None:
    log = tmp_path / "executions.log"
    failing = unchanged(sample_repo, f"echo ran >> {log} && test -f src/absent.py")
    settings = unboxed(embedded_settings, cache=True)
    run_specs(settings, [failing, failing])
    # Run 1: its baseline fails, so its after runs too; run 2: the baseline is run 1's record (a
    # failure is reused as a baseline), the after runs again.
    assert executions(log) == 2 + 1
    with transaction(settings.database_url) as session:
        notes = session.scalars(attempt_notes()).all()
    assert len(notes) == 2 and not any("before; not run again" in (n or "") for n in notes)


@pytest.mark.usefixtures("restore_sandbox")
def test_a_recorded_failure_found_for_a_change_is_run_again_and_not_counted_as_a_hit(
    embedded_settings: Settings, sample_repo: Path, tmp_path: Path
) -> None:
    log = tmp_path / "executions.log"
    check = f"echo ran >> {log} && test -f src/absent.py"  # fails on every tree
    spec = {
        "repo": str(sample_repo),
        "config": {"builder": "script", "max_attempts": 1},
        "phases": [
            {"name": "new", "scope": ["src/"], "command": "echo 1 > src/new.py", "validation": [check]}
        ],
    }
    settings = unboxed(embedded_settings, cache=True)
    runs = run_specs(settings, [spec, spec])
    assert [r["state"] for r in runs] == ["DONE_SUCCESS", "DONE_SUCCESS"]  # no worse than the baseline
    # Run 1: baseline and after; run 2: its baseline is run 1's record, its after (a failure on record
    # for that tree) runs again.
    assert executions(log) == 2 + 1
    base = git_tree(sample_repo, "main")
    with transaction(settings.database_url) as session:
        hits = dict(session.execute(select(ValidationResult.tree_sha, ValidationResult.hits)).all())
    assert len(hits) == 2 and hits.pop(base) == 1  # the baseline served once
    assert list(hits.values()) == [0]  # the failure found for the change served nothing


# --- slot affinity ---------------------------------------------------------------------------------


def commit(repo: Path, rel: str) -> str:
    (repo / rel).write_text(rel)
    for args in (["add", "--all"], ["-c", "user.name=T", "-c", "user.email=t@x", "commit", "-qm", rel]):
        subprocess.run(["git", "-C", str(repo), *args], check=True)
    return subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()


def test_a_phase_gets_the_free_slot_already_at_its_commit(sample_repo: Path, tmp_path: Path) -> None:
    first = commit(sample_repo, "one.txt")
    second = commit(sample_repo, "two.txt")
    pool = WorkspaceManager(tmp_path / "ws", slots=3)
    repo = str(sample_repo)
    with pool.worktree(repo, first) as a, pool.worktree(repo, second) as b:
        assert (a.path.name, b.path.name) == ("slot-0", "slot-1")
    assert slot_head(b.path) == second
    # Without affinity the first free slot (slot-0, at `first`) would be reset across to `second`.
    with pool.worktree(repo, second) as again:
        assert again.path == b.path
    with pool.worktree(repo, first) as back:
        assert back.path == a.path
    # Busy: the slot at the commit is held, so another free one is used.
    with pool.worktree(repo, first) as held, pool.worktree(repo, first) as other:
        assert held.path == a.path and other.path != a.path
    assert slot_head(tmp_path / "nowhere") is None


def git_tree(repo: Path, ref: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "rev-parse", f"{ref}^{{tree}}"], check=True, capture_output=True, text=True
    ).stdout.strip()
