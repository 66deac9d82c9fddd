"""Pipeline steps and shell commands on a real git repository: diff, scope, stage, validate, commit."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from shared.settings import Settings
from shared.specs import PhaseSpec
from shared.states import AttemptOutcome
from workers import steps
from workers.attempt import Plan, run_attempt
from workers.commands import clean_env, run_command
from workers.executor import WorkerContext
from workers.lease import Lease
from workers.record import AttemptRecord, PhaseJob
from workers.sandbox import NoSandbox, SandboxPolicy

AUTHOR = "Autopack Test <autopack-test@localhost>"


def sh_git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def commit_count(repo: Path) -> int:
    return int(sh_git(repo, "rev-list", "--count", "HEAD"))


def phase(**fields: object) -> PhaseSpec:
    base: dict[str, object] = {"name": "p", "scope": ["src"], "command": "true"}
    return PhaseSpec.model_validate({**base, **fields})


def _alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (PID 1 here may never reap re-parented children)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


# --- changed_paths ------------------------------------------------------------------------------


def test_changed_paths_lists_added_modified_deleted_and_untracked_files_in_new_dirs(
    sample_repo: Path,
) -> None:
    (sample_repo / "src" / "calc.py").write_text("changed = True\n")  # modified
    (sample_repo / "README.md").unlink()  # deleted
    (sample_repo / "src" / "greet.py").write_text("x = 1\n")  # added, untracked
    (sample_repo / "newdir" / "deep").mkdir(parents=True)
    (sample_repo / "newdir" / "deep" / "mod.py").write_text("y = 2\n")  # untracked in a new dir
    (sample_repo / "docs").mkdir()
    (sample_repo / "docs" / "with space.md").write_text("z\n")  # needs -z parsing
    (sample_repo / "staged.txt").write_text("s\n")
    sh_git(sample_repo, "add", "staged.txt")  # added, staged

    assert steps.worktree_status(sample_repo).paths == [
        "README.md",
        "docs/with space.md",
        "newdir/deep/mod.py",
        "src/calc.py",
        "src/greet.py",
        "staged.txt",
    ]


def test_changed_paths_ignores_gitignored_files(sample_repo: Path) -> None:
    (sample_repo / "src" / "__pycache__").mkdir()
    (sample_repo / "src" / "__pycache__" / "calc.cpython-311.pyc").write_bytes(b"\0")
    (sample_repo / "stray.pyc").write_bytes(b"\0")
    assert steps.worktree_status(sample_repo).paths == []

    (sample_repo / "src" / "real.py").write_text("r = 1\n")
    assert steps.worktree_status(sample_repo).paths == ["src/real.py"]


def test_changed_paths_is_empty_on_a_clean_checkout(sample_repo: Path) -> None:
    assert steps.worktree_status(sample_repo).paths == []


def test_status_says_ignored_files_lie_beside_the_change_without_listing_them_as_changed(
    sample_repo: Path,
) -> None:
    assert steps.worktree_status(sample_repo) == steps.Status([], ignored=False)
    (sample_repo / "src" / "real.py").write_text("r = 1\n")
    assert steps.worktree_status(sample_repo) == steps.Status(["src/real.py"], ignored=False)
    (sample_repo / "src" / "__pycache__").mkdir()
    (sample_repo / "src" / "__pycache__" / "real.cpython-311.pyc").write_bytes(b"\0")
    assert steps.worktree_status(sample_repo) == steps.Status(["src/real.py"], ignored=True)


# --- scope_violations ---------------------------------------------------------------------------


def test_scope_violations_accepts_paths_inside_scope() -> None:
    spec = phase(scope=["src", "tests/"])
    assert steps.scope_violations(["src", "src/a.py", "src/pkg/b.py", "tests/test_x.py"], spec) == []


def test_scope_violations_reports_a_path_outside_scope() -> None:
    spec = phase(scope=["src"])
    reasons = steps.scope_violations(["src/ok.py", "docs/readme.md"], spec)
    assert len(reasons) == 1
    assert reasons[0].startswith("docs/readme.md: outside scope")


def test_scope_violations_reports_a_protected_path_inside_scope() -> None:
    spec = phase(scope=["tests/"], protected_paths=["tests/test_calc.py", "tests/fixtures"])
    reasons = steps.scope_violations(
        ["tests/test_calc.py", "tests/fixtures/data.json", "tests/test_new.py", "tests/fixtures_extra.py"],
        spec,
    )
    assert reasons == ["tests/test_calc.py: protected path", "tests/fixtures/data.json: protected path"]


@pytest.mark.parametrize("path", [".git/config", ".git/hooks/pre-commit", ".GIT/HEAD"])
def test_scope_violations_reports_paths_inside_dot_git_even_when_scope_is_broad(path: str) -> None:
    spec = phase(scope=[".github", "src"])  # a `.git`-prefixed scope must not open .git itself
    assert steps.scope_violations([path], spec) == [f"{path}: inside .git"]


def test_scope_violations_reports_paths_escaping_the_worktree() -> None:
    spec = phase(scope=["src"])
    reasons = steps.scope_violations(["src/../../etc/passwd", "/etc/passwd"], spec)
    assert reasons == ["src/../../etc/passwd: outside the worktree", "/etc/passwd: outside the worktree"]


@pytest.mark.parametrize("scope", ["src", "src/"])
def test_scope_violations_does_not_let_a_scope_match_a_longer_sibling_name(scope: str) -> None:
    spec = phase(scope=[scope])
    reasons = steps.scope_violations(["srcfoo/x.py", "src.py", "src/x.py"], spec)
    assert [r.split(":")[0] for r in reasons] == ["srcfoo/x.py", "src.py"]


# --- stage and commit ---------------------------------------------------------------------------


def test_stage_commits_only_the_builder_paths_not_validation_leftovers(sample_repo: Path) -> None:
    (sample_repo / "src" / "greet.py").write_text("def greet() -> str:\n    return 'hi'\n")
    (sample_repo / "README.md").unlink()
    builder_paths = steps.worktree_status(sample_repo).paths
    assert builder_paths == ["README.md", "src/greet.py"]

    # what validation leaves behind after the builder's paths were listed
    (sample_repo / "coverage.xml").write_text("<coverage/>\n")
    (sample_repo / "src" / "generated.py").write_text("g = 1\n")
    (sample_repo / "src" / "calc.py").write_text("# touched by a formatter\n")

    steps.stage(sample_repo, builder_paths)
    staged = sh_git(sample_repo, "diff", "--cached", "--name-status").splitlines()
    assert staged == ["D\tREADME.md", "A\tsrc/greet.py"]

    sha = steps.commit(sample_repo, "phase", AUTHOR)
    committed = sh_git(sample_repo, "show", "--name-only", "--format=", sha).splitlines()
    assert sorted(committed) == ["README.md", "src/greet.py"]
    assert (sample_repo / "coverage.xml").exists()  # left in the worktree, just not committed


def test_stage_with_no_paths_stages_nothing(sample_repo: Path) -> None:
    (sample_repo / "leftover.txt").write_text("x\n")
    steps.stage(sample_repo, [])
    assert sh_git(sample_repo, "diff", "--cached", "--name-only") == ""


def test_commit_creates_exactly_one_commit_with_message_and_author(sample_repo: Path) -> None:
    before = commit_count(sample_repo)
    parent = sh_git(sample_repo, "rev-parse", "HEAD")
    (sample_repo / "src" / "greet.py").write_text("g = 1\n")
    steps.stage(sample_repo, ["src/greet.py"])

    message = "autopack: run 1 phase 0 add-greeting\n\nAdd greet()"
    sha = steps.commit(sample_repo, message, AUTHOR)

    assert commit_count(sample_repo) == before + 1
    assert sha == sh_git(sample_repo, "rev-parse", "HEAD")
    assert sh_git(sample_repo, "rev-parse", f"{sha}^") == parent
    assert sh_git(sample_repo, "log", "-1", "--format=%B", sha) == message
    assert (
        sh_git(sample_repo, "log", "-1", "--format=%an|%ae", sha) == "Autopack Test|autopack-test@localhost"
    )
    assert sh_git(sample_repo, "show", "--name-only", "--format=", sha) == "src/greet.py"


def test_commit_with_no_change_still_creates_one_empty_commit(sample_repo: Path) -> None:
    before = commit_count(sample_repo)
    tree = sh_git(sample_repo, "rev-parse", "HEAD^{tree}")

    sha = steps.commit(sample_repo, "nothing to do", AUTHOR)

    assert commit_count(sample_repo) == before + 1
    assert sh_git(sample_repo, "rev-parse", f"{sha}^{{tree}}") == tree
    assert sh_git(sample_repo, "log", "-1", "--format=%s", sha) == "nothing to do"


# --- validate and missing_deliverables ----------------------------------------------------------


def test_validate_runs_every_command_when_all_pass(tmp_path: Path) -> None:
    spec = phase(validation=["echo one", "echo two"])
    result = steps.validate(spec, tmp_path, timeout=10, max_bytes=10_000)
    assert result.ok
    assert [r.command for r in result.results] == ["echo one", "echo two"]
    assert result.failure() is None
    assert "one" in result.report() and "two" in result.report()


def test_validate_stops_at_the_first_failing_command_and_reports_it(tmp_path: Path) -> None:
    spec = phase(validation=["echo first", "echo broken-check >&2; exit 3", "touch third-ran"])
    result = steps.validate(spec, tmp_path, timeout=10, max_bytes=10_000)

    assert not result.ok
    assert [r.command for r in result.results] == ["echo first", "echo broken-check >&2; exit 3"]
    assert result.results[-1].exit_code == 3
    assert not (tmp_path / "third-ran").exists()
    failure = result.failure()
    assert failure is not None
    assert failure.startswith("validation failed: $ echo broken-check >&2; exit 3  (exit 3")
    assert "broken-check" in failure


def test_missing_deliverables_lists_only_absent_files(sample_repo: Path) -> None:
    spec = phase(deliverables=["src/greet.py", "src/calc.py", "tests/test_greet.py"])
    assert steps.missing_deliverables(spec, sample_repo) == ["src/greet.py", "tests/test_greet.py"]
    (sample_repo / "src" / "greet.py").write_text("g = 1\n")
    assert steps.missing_deliverables(spec, sample_repo) == ["tests/test_greet.py"]


# --- run_command ----------------------------------------------------------------------------------


def test_run_command_reports_exit_code_and_combined_output(tmp_path: Path) -> None:
    result = run_command("echo out; echo err >&2; exit 7", tmp_path, timeout=10, max_bytes=10_000)
    assert result.exit_code == 7
    assert not result.ok
    assert not result.timed_out
    assert result.output == "out\nerr\n"


def test_run_command_runs_in_the_given_directory(tmp_path: Path) -> None:
    result = run_command("pwd", tmp_path, timeout=10, max_bytes=10_000)
    assert result.ok
    assert Path(result.output.strip()).resolve() == tmp_path.resolve()


def test_run_command_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    # The command's pids live in its own pid namespace, so the proof is behavioural: a backgrounded
    # child that would write a file two seconds after the timeout never writes it.
    start = time.monotonic()
    command = "(sleep 2; echo survived > late.txt) & sleep 30"
    result = run_command(command, tmp_path, timeout=1, max_bytes=10_000)
    elapsed = time.monotonic() - start

    assert result.timed_out
    assert not result.ok
    assert elapsed < 10
    assert "timed out" in result.summary()
    time.sleep(3)
    assert not (tmp_path / "late.txt").exists(), "the backgrounded child survived the timeout"


def test_run_command_caps_output_over_max_bytes_with_a_marker(tmp_path: Path) -> None:
    command = "printf HEAD; head -c 100000 /dev/zero | tr '\\0' x; printf TAIL"
    result = run_command(command, tmp_path, timeout=10, max_bytes=1000)

    assert result.ok
    assert "bytes cut]" in result.output
    assert f"[{100008 - 1000} bytes cut]" in result.output
    assert result.output.startswith("HEAD")
    assert result.output.endswith("TAIL")
    assert len(result.output.encode()) < 1000 + 100


def test_run_command_keeps_output_under_max_bytes_intact(tmp_path: Path) -> None:
    result = run_command("printf 'abc'", tmp_path, timeout=10, max_bytes=3)
    assert result.output == "abc"


def test_child_commands_do_not_see_autopack_or_anthropic_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTOPACK_DATABASE_URL", "postgresql://secret-db")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-secret")
    monkeypatch.setenv("AUTOPACK_TEST_VISIBLE_CONTROL", "nope")
    monkeypatch.setenv("HARMLESS_TEST_VARIABLE", "visible")

    boxed = run_command("env", tmp_path, timeout=10, max_bytes=100_000, env={"DECLARED": "yes"})
    unboxed = run_command("env", tmp_path, timeout=10, max_bytes=100_000, backend=NoSandbox(SandboxPolicy()))

    assert boxed.ok and unboxed.ok
    for result in (boxed, unboxed):
        assert "secret-db" not in result.output
        assert "sk-ant-secret" not in result.output
        assert "AUTOPACK_" not in result.output
        assert "ANTHROPIC_" not in result.output
    # The box's environment is an allowlist plus what the phase declares; unboxed it is the scrubbed one.
    assert "DECLARED=yes" in boxed.output
    assert "HARMLESS_TEST_VARIABLE" not in boxed.output
    assert "HARMLESS_TEST_VARIABLE=visible" in unboxed.output


def test_clean_env_strips_secret_prefixes_and_adds_extras(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOPACK_BROKER_URL", "redis://secret")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant")
    monkeypatch.setenv("PGPASSWORD", "pw")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws")
    monkeypatch.setenv("KEEP_ME", "1")

    env = clean_env({"EXTRA": "yes"})

    assert not any(k.startswith(("AUTOPACK_", "ANTHROPIC_", "PG", "AWS_")) for k in env)
    assert env["KEEP_ME"] == "1"
    assert env["EXTRA"] == "yes"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert "PATH" in env


# --- the steps inside one attempt (workers/attempt.run_attempt), for what they must guarantee ----


def _attempt(settings: Settings, repo: Path, phase_fields: dict[str, object]) -> AttemptRecord:
    """One real attempt of a one-phase job in a pooled worktree (no database is touched)."""
    ctx = WorkerContext.build(settings.model_copy(update={"push_results": False}), _NoDispatch())
    job = PhaseJob(
        run_id=1,
        phase_id=1,
        phase_index=0,
        phase=phase(**phase_fields),
        repo=str(repo),
        head_sha=sh_git(repo, "rev-parse", "HEAD"),
        config={"builder": "script"},
        attempts_used=0,
        last_failure=None,
    )
    lease = Lease(settings.database_url, run_id=1, owner="test", epoch=1, ttl=30)
    plan = Plan(1, None, None, None, None, None)
    return run_attempt(ctx, lease, job, plan).record


class _NoDispatch:
    def enqueue(self, run_id: int, phase_id: int, *, background: bool = False) -> None:
        raise AssertionError("an attempt never dispatches")

    def waiting(self) -> set[tuple[int, int]] | None:
        return None


def test_a_change_the_builder_committed_itself_is_still_scope_checked(
    embedded_settings: Settings, sample_repo: Path
) -> None:
    # PRODUCT BUG: changed_paths diffs the worktree against HEAD, so a builder that commits its own
    # out-of-scope change (here README.md) moves HEAD and the change is never seen by the scope check.
    base = sh_git(sample_repo, "rev-parse", "HEAD")
    command = (
        "echo sneaky >> README.md && git -c user.name=b -c user.email=b@b commit -qam sneaky"
        " && echo 'g = 1' > src/greet.py"
    )
    rec = _attempt(embedded_settings, sample_repo, {"scope": ["src/greet.py"], "command": command})

    assert rec.outcome == AttemptOutcome.SCOPE_VIOLATION, (rec.outcome, rec.changed_paths, rec.commit_sha)
    assert rec.failure_reason is not None and "README.md" in rec.failure_reason
    assert rec.commit_sha is None or sh_git(sample_repo, "rev-parse", f"{rec.commit_sha}^") == base


# Two ways a builder command makes the worker's own git calls run its code: a hook, and a config key.
PLANTS = {
    # Written from inside the box (which cannot see {script} itself): a hook that would run it outside.
    "post-commit hook": 'h="$(git rev-parse --git-common-dir)/hooks"; mkdir -p "$h"'
    ' && printf \'#!/bin/sh\\nexec {script}\\n\' > "$h/post-commit" && chmod +x "$h/post-commit"',
    "core.fsmonitor": "git config core.fsmonitor {script}",
}


@pytest.mark.parametrize("plant", list(PLANTS))
def test_git_code_planted_by_a_builder_never_runs_with_worker_secrets(
    plant: str,
    embedded_settings: Settings,
    sample_repo: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # PRODUCT BUG: the worktree's git dir is the shared mirror, writable by the builder command; the
    # worker's own git commands (status, commit, ...) then run what it planted with the worker's full
    # environment, secrets included (shared/git.py passes os.environ through unfiltered).
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-must-not-leak")
    loot = tmp_path / "planted-code-saw.env"
    script = tmp_path / "planted.sh"
    script.write_text(f"#!/bin/sh\nenv >> {loot}\n")
    script.chmod(0o755)
    command = PLANTS[plant].format(script=script) + " && echo 'g = 1' > src/greet.py"

    rec = _attempt(embedded_settings, sample_repo, {"scope": ["src/greet.py"], "command": command})

    assert rec.outcome == AttemptOutcome.SUCCESS, rec.failure_reason
    leaked = loot.read_text() if loot.exists() else ""
    assert "sk-ant-must-not-leak" not in leaked
