"""WorkspaceManager and Mirror on real git repositories: clone, reuse, reset, fetch, slots, prune."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import workers.workspace.mirror as workspace_mod
import workers.workspace.pool as pool_mod
import workers.workspace.repair as repair_mod
from shared.errors import GitError, WorkspaceError
from workers.publish import branch_ref, phase_ref, publish
from workers.workspace import WorkspaceManager, repo_key

ROOT = Path(__file__).resolve().parent.parent


def sh_git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def head(repo: Path) -> str:
    return sh_git(repo, "rev-parse", "HEAD")


def commit_file(repo: Path, rel: str, text: str, message: str) -> str:
    target = repo / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    sh_git(repo, "add", "--all")
    sh_git(repo, "-c", "user.name=T", "-c", "user.email=t@localhost", "commit", "--quiet", "-m", message)
    return head(repo)


def worktree_records(mirror: Path) -> list[str]:
    """The worktrees git knows about in the bare mirror (the bare repository itself excluded)."""
    out = subprocess.run(
        ["git", "--git-dir", str(mirror), "worktree", "list", "--porcelain"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    paths = [line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("worktree ")]
    return [p for p in paths if Path(p).resolve() != mirror.resolve()]


@pytest.fixture
def manager(tmp_path: Path) -> WorkspaceManager:
    return WorkspaceManager(tmp_path / "workspace", slots=2)


@pytest.fixture
def git_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, ...]]]:
    """Every git command the workspace package runs (still executed for real), in order."""
    calls: list[tuple[str, ...]] = []
    real = workspace_mod.git

    def recording(*args: str, **kwargs: Any) -> str:
        calls.append(args)
        return real(*args, **kwargs)

    for module in (workspace_mod, pool_mod, repair_mod):
        monkeypatch.setattr(module, "git", recording)
    yield calls


def _worktree_adds(calls: list[tuple[str, ...]]) -> int:
    return sum(1 for c in calls if c[:2] == ("worktree", "add"))


def test_first_use_clones_a_bare_mirror_and_checks_out_a_detached_worktree_at_the_sha(
    manager: WorkspaceManager, sample_repo: Path
) -> None:
    sha = head(sample_repo)
    with manager.worktree(str(sample_repo), sha) as wt:
        mirror = manager.mirror(str(sample_repo)).path
        assert wt.mirror.path == mirror
        assert mirror == manager.root / "mirrors" / f"{repo_key(str(sample_repo))}.git"
        assert sh_git(mirror, "rev-parse", "--is-bare-repository") == "true"
        assert head(wt.path) == sha
        # detached: HEAD is not a symbolic ref
        detached = subprocess.run(["git", "-C", str(wt.path), "symbolic-ref", "-q", "HEAD"], check=False)
        assert detached.returncode != 0
        calc = (wt.path / "src" / "calc.py").read_text()
        assert calc == "def add(a: int, b: int) -> int:\n    return a + b\n"
        assert sh_git(wt.path, "status", "--porcelain") == ""
        assert [Path(p).resolve() for p in worktree_records(mirror)] == [wt.path.resolve()]


def test_mirror_keeps_commits_from_gc_and_fetches_branches_and_tags_but_not_run_branches(
    manager: WorkspaceManager, sample_repo: Path
) -> None:
    mirror = manager.mirror(str(sample_repo))
    mirror.ensure(head(sample_repo))
    assert sh_git(mirror.path, "config", "gc.auto") == "0"
    specs = sh_git(mirror.path, "config", "--get-all", "remote.origin.fetch").splitlines()
    assert specs == list(workspace_mod.FETCH_REFSPECS)
    assert not mirror.path.with_name(mirror.path.name + ".tmp").exists()


def test_reprovisioning_a_slot_reuses_the_directory_without_worktree_add(
    manager: WorkspaceManager, sample_repo: Path, git_calls: list[tuple[str, ...]]
) -> None:
    sha = head(sample_repo)
    with manager.worktree(str(sample_repo), sha) as first:
        first_path = first.path
    mirror = manager.mirror(str(sample_repo)).path
    records_before = worktree_records(mirror)
    adds_before = _worktree_adds(git_calls)
    assert adds_before == 1

    with manager.worktree(str(sample_repo), sha) as second:
        assert second.path == first_path
        assert head(second.path) == sha
    assert _worktree_adds(git_calls) == adds_before, "a reused slot must not be re-added"
    assert worktree_records(mirror) == records_before


def test_reprovisioning_a_slot_discards_modified_staged_untracked_and_ignored_files(
    manager: WorkspaceManager, sample_repo: Path
) -> None:
    sha = head(sample_repo)
    with manager.worktree(str(sample_repo), sha) as wt:
        (wt.path / "src" / "calc.py").write_text("broken = True\n")  # modified tracked
        (wt.path / "README.md").unlink()  # deleted tracked
        (wt.path / "staged.txt").write_text("staged\n")
        sh_git(wt.path, "add", "staged.txt")  # staged new file
        (wt.path / "newdir" / "deep").mkdir(parents=True)
        (wt.path / "newdir" / "deep" / "untracked.py").write_text("x = 1\n")  # untracked in new dir
        (wt.path / "src" / "__pycache__").mkdir()
        (wt.path / "src" / "__pycache__" / "calc.cpython-311.pyc").write_bytes(b"\0")  # ignored
        (wt.path / "stray.pyc").write_bytes(b"\0")  # ignored
        assert sh_git(wt.path, "status", "--porcelain", "--ignored") != ""
        path = wt.path

    with manager.worktree(str(sample_repo), sha) as wt:
        assert wt.path == path
        assert (wt.path / "src" / "calc.py").read_text().startswith("def add(")
        assert (wt.path / "README.md").exists()
        assert not (wt.path / "staged.txt").exists()
        assert not (wt.path / "newdir").exists()
        assert not (wt.path / "src" / "__pycache__").exists()
        assert not (wt.path / "stray.pyc").exists()
        assert sh_git(wt.path, "status", "--porcelain", "--ignored") == ""


def test_reprovisioning_moves_a_reused_slot_to_a_different_sha(
    manager: WorkspaceManager, sample_repo: Path
) -> None:
    first_sha = head(sample_repo)
    second_sha = commit_file(sample_repo, "src/extra.py", "X = 1\n", "extra")
    with manager.worktree(str(sample_repo), second_sha) as wt:
        assert (wt.path / "src" / "extra.py").exists()
        path = wt.path
    with manager.worktree(str(sample_repo), first_sha) as wt:
        assert wt.path == path
        assert head(wt.path) == first_sha
        assert not (wt.path / "src" / "extra.py").exists()


def test_an_index_lock_left_by_a_crash_mid_git_command_is_dropped_and_the_slot_reused(
    manager: WorkspaceManager, sample_repo: Path, git_calls: list[tuple[str, ...]]
) -> None:
    sha = head(sample_repo)
    with manager.worktree(str(sample_repo), sha) as wt:
        (wt.path / "src" / "calc.py").write_text("half-written\n")
        admin = Path(sh_git(wt.path, "rev-parse", "--absolute-git-dir"))
        path = wt.path
    (admin / "index.lock").write_text("")  # what a SIGKILL during `git reset` leaves behind

    with manager.worktree(str(sample_repo), sha) as wt:
        assert wt.path == path
        assert head(wt.path) == sha
        assert (wt.path / "src" / "calc.py").read_text().startswith("def add(")
        assert sh_git(wt.path, "status", "--porcelain") == ""
    assert not (admin / "index.lock").exists()
    assert _worktree_adds(git_calls) == 1  # repaired in place: no second `worktree add`


def test_a_sha_committed_to_origin_after_the_clone_is_fetched_on_demand(
    manager: WorkspaceManager, sample_repo: Path
) -> None:
    with manager.worktree(str(sample_repo), head(sample_repo)):
        pass
    mirror = manager.mirror(str(sample_repo))
    new_sha = commit_file(sample_repo, "src/later.py", "LATER = True\n", "later")
    assert not mirror.has(new_sha)

    with manager.worktree(str(sample_repo), new_sha) as wt:
        assert head(wt.path) == new_sha
        assert (wt.path / "src" / "later.py").read_text() == "LATER = True\n"
    assert mirror.has(new_sha)


def test_a_sha_missing_from_origin_raises_workspace_error_naming_the_commit(
    manager: WorkspaceManager, sample_repo: Path
) -> None:
    missing = "0123456789abcdef0123456789abcdef01234567"
    with pytest.raises(WorkspaceError) as err, manager.worktree(str(sample_repo), missing):
        pytest.fail("a worktree must not be handed out for a missing commit")
    assert missing in str(err.value)
    assert str(sample_repo) in str(err.value)


def test_an_unreachable_repository_raises_workspace_error(manager: WorkspaceManager, tmp_path: Path) -> None:
    gone = tmp_path / "no-such-repo"
    with pytest.raises(WorkspaceError, match="refreshing mirror"), manager.worktree(str(gone), "a" * 40):
        pytest.fail("unreachable")


def test_two_concurrent_holders_in_threads_get_different_slots(
    manager: WorkspaceManager, sample_repo: Path
) -> None:
    sha = head(sample_repo)
    manager.mirror(str(sample_repo)).ensure(sha)
    both_inside = threading.Barrier(2, timeout=30)
    paths: dict[str, Path] = {}
    errors: list[BaseException] = []

    def hold(name: str) -> None:
        try:
            with manager.worktree(str(sample_repo), sha) as wt:
                paths[name] = wt.path
                both_inside.wait()  # neither releases before the other holds a slot
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=hold, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert set(paths) == {"a", "b"}
    assert paths["a"] != paths["b"]
    assert {p.name for p in paths.values()} == {"slot-0", "slot-1"}


HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from workers.workspace import WorkspaceManager

    manager = WorkspaceManager(Path(sys.argv[1]), slots=2)
    with manager.worktree(sys.argv[2], sys.argv[3]) as wt:
        print(wt.path, flush=True)
        time.sleep(120)
    """
)


def _slot_lock_is_free(lock: Path) -> bool:
    with lock.open("a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(fh, fcntl.LOCK_UN)
        return True


def test_a_slot_held_by_a_sigkilled_process_is_reusable_at_once(
    manager: WorkspaceManager, sample_repo: Path
) -> None:
    sha = head(sample_repo)
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(manager.root), str(sample_repo), sha],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        held = Path(child.stdout.readline().strip())
        assert held.name == "slot-0", child.stderr.read() if child.stderr else ""
        lock = held.with_name("slot-0.lock")
        assert not _slot_lock_is_free(lock)

        # While the child lives, this process is sent to the other slot.
        with manager.worktree(str(sample_repo), sha) as wt:
            assert wt.path.name == "slot-1"

        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        assert child.returncode == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        if child.stdout:
            child.stdout.close()
        if child.stderr:
            child.stderr.close()

    assert _slot_lock_is_free(lock)
    with manager.worktree(str(sample_repo), sha) as wt:
        assert wt.path == held
        assert head(wt.path) == sha


def test_prune_drops_worktree_records_whose_directories_were_deleted(
    manager: WorkspaceManager, sample_repo: Path
) -> None:
    sha = head(sample_repo)
    mirror = manager.mirror(str(sample_repo)).path
    entered = threading.Barrier(2, timeout=30)

    def hold_other_slot() -> None:
        with manager.worktree(str(sample_repo), sha):
            entered.wait()

    with manager.worktree(str(sample_repo), sha) as kept:  # two holders at once: two worktrees
        other = threading.Thread(target=hold_other_slot)
        other.start()
        entered.wait()
        other.join(30)
    assert len(worktree_records(mirror)) == 2

    gone = next(Path(p) for p in worktree_records(mirror) if Path(p).resolve() != kept.path.resolve())
    shutil.rmtree(gone)
    assert len(worktree_records(mirror)) == 2  # git still remembers the deleted one

    manager.prune()
    assert [Path(p).resolve() for p in worktree_records(mirror)] == [kept.path.resolve()]


def test_prune_on_an_empty_workspace_does_nothing(tmp_path: Path) -> None:
    manager = WorkspaceManager(tmp_path / "never-used", slots=1)
    manager.prune()
    assert not (tmp_path / "never-used").exists()


def test_result_refs_published_only_to_the_mirror_survive_a_later_fetch(
    manager: WorkspaceManager, sample_repo: Path
) -> None:
    # PRODUCT BUG: with push_results=False the run branch lives only in the mirror (README: "and in each
    # worker host's mirror"), but Mirror.ensure fetches with --prune, which deletes every local
    # refs/heads/* and refs/autopack/* ref that origin does not have, the first time any commit is missing.
    with manager.worktree(str(sample_repo), head(sample_repo)) as wt:
        result = commit_file(wt.path, "src/greet.py", "g = 1\n", "phase 0")
    mirror = manager.mirror(str(sample_repo))
    publish(mirror.path, phase_ref(1, 0, 1), result, push=False)
    publish(mirror.path, branch_ref(1), result, push=False)

    later = commit_file(sample_repo, "src/later.py", "L = 1\n", "someone else's commit")
    mirror.ensure(later)  # another run needs a commit the mirror lacks: fetch

    refs = sh_git(mirror.path, "for-each-ref", "--format=%(refname) %(objectname)").splitlines()
    assert f"{branch_ref(1)} {result}" in refs
    assert f"{phase_ref(1, 0, 1)} {result}" in refs


def test_a_ref_lock_left_by_a_fetch_killed_mid_way_does_not_break_later_fetches(
    manager: WorkspaceManager, sample_repo: Path
) -> None:
    with manager.worktree(str(sample_repo), head(sample_repo)):
        pass
    mirror = manager.mirror(str(sample_repo))
    subprocess.run(["git", "-C", str(sample_repo), "branch", "autopack/run-8"], check=True)
    stale = mirror.path / "refs" / "heads" / "autopack" / "run-8.lock"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_text("")
    os.utime(stale, (0, 0))  # as old as a lock of a process killed long ago
    new_sha = commit_file(sample_repo, "src/after_crash.py", "X = 1\n", "after crash")
    with manager.worktree(str(sample_repo), new_sha) as wt:
        assert head(wt.path) == new_sha
    assert not stale.exists()


def _add_refs(repo: Path, n: int, sha: str) -> None:
    lines = "".join(f"create refs/autopack/run-{i}/phase-0-e1 {sha}\n" for i in range(n))
    subprocess.run(["git", "-C", str(repo), "update-ref", "--stdin"], input=lines, text=True, check=True)


def test_compacting_packs_thousands_of_loose_refs_in_the_mirror_and_its_local_origin_keeping_every_ref(
    manager: WorkspaceManager, sample_repo: Path
) -> None:
    sha = head(sample_repo)
    with manager.worktree(str(sample_repo), sha) as wt:
        mirror = wt.mirror.path
    _add_refs(sample_repo, 600, sha)
    _add_refs(mirror, 300, sha)
    assert workspace_mod.loose_refs(sample_repo) >= 600 and workspace_mod.loose_refs(mirror) >= 300

    assert manager.compact_refs() == 2

    assert workspace_mod.loose_refs(sample_repo) == 0 and workspace_mod.loose_refs(mirror) == 0
    assert len(sh_git(sample_repo, "for-each-ref", "refs/autopack").splitlines()) == 600
    assert sh_git(sample_repo, "rev-parse", "refs/autopack/run-599/phase-0-e1") == sha
    # A push after packing still updates a packed ref.
    publish(mirror, phase_ref(599, 0, 1), sha, push=True)
    assert sh_git(sample_repo, "rev-parse", phase_ref(599, 0, 1)) == sha


def test_compacting_leaves_a_repository_with_few_loose_refs_alone(
    manager: WorkspaceManager, sample_repo: Path
) -> None:
    sha = head(sample_repo)
    with manager.worktree(str(sample_repo), sha):
        pass
    _add_refs(sample_repo, 10, sha)

    assert manager.compact_refs() == 0
    assert workspace_mod.loose_refs(sample_repo) >= 10


def test_a_fetch_that_lost_a_ref_race_to_a_local_branch_move_is_retried(
    manager: WorkspaceManager, sample_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with manager.worktree(str(sample_repo), head(sample_repo)):
        pass
    new_sha = commit_file(sample_repo, "src/new.py", "X = 1\n", "after the clone")
    real = workspace_mod.git
    fetches: list[int] = []

    def racing(*args: str, **kwargs: Any) -> str:
        if "fetch" in args[:3]:  # after any -c options
            fetches.append(1)
            if len(fetches) == 1:  # what git says when a phase moved the branch mid-fetch
                raise GitError(
                    "git fetch --quiet failed (1): error: cannot lock ref 'refs/heads/autopack/run-15': "
                    "is at ca16a69 but expected 0037b6a"
                )
        return real(*args, **kwargs)

    monkeypatch.setattr(workspace_mod, "git", racing)
    with manager.worktree(str(sample_repo), new_sha) as wt:
        assert head(wt.path) == new_sha
    assert len(fetches) == 2


def _pushed_phase(manager: WorkspaceManager, repo: Path, run_id: int, text: str) -> tuple[Path, str]:
    """A phase commit made in a worktree and pushed under its phase ref (epoch 1): (mirror, sha)."""
    with manager.worktree(str(repo), head(repo)) as wt:
        sha = commit_file(wt.path, "src/greet.py", text, "phase 0")
    mirror = manager.mirror(str(repo)).path
    publish(mirror, phase_ref(run_id, 0, 1), sha, push=True)
    return mirror, sha


def test_moving_the_run_branch_deletes_the_phase_ref_in_the_same_push(
    manager: WorkspaceManager, sample_repo: Path
) -> None:
    mirror, result = _pushed_phase(manager, sample_repo, 3, "g = 2\n")
    assert sh_git(sample_repo, "rev-parse", phase_ref(3, 0, 1)) == result

    publish(mirror, branch_ref(3), result, push=True, drop=phase_ref(3, 0, 1))

    assert sh_git(sample_repo, "rev-parse", branch_ref(3)) == result
    assert sh_git(sample_repo, "for-each-ref", "refs/autopack") == ""


def test_a_branch_move_whose_phase_ref_is_already_gone_still_moves_the_branch(
    manager: WorkspaceManager, sample_repo: Path
) -> None:
    # A retried move (the first one's DB write failed) finds the phase ref deleted already.
    mirror, result = _pushed_phase(manager, sample_repo, 4, "g = 3\n")
    publish(mirror, branch_ref(4), result, push=True, drop=phase_ref(4, 0, 1))

    publish(mirror, branch_ref(4), result, push=True, drop=phase_ref(4, 0, 1))

    assert sh_git(sample_repo, "rev-parse", branch_ref(4)) == result


def test_a_late_branch_move_from_a_taken_over_holder_cannot_move_the_branch_back(
    manager: WorkspaceManager, sample_repo: Path
) -> None:
    with manager.worktree(str(sample_repo), head(sample_repo)) as wt:
        first = commit_file(wt.path, "src/a.py", "A = 1\n", "phase 0")
        second = commit_file(wt.path, "src/b.py", "B = 1\n", "phase 1")
    mirror = manager.mirror(str(sample_repo)).path
    publish(mirror, phase_ref(5, 0, 1), first, push=True)
    publish(mirror, phase_ref(5, 1, 2), second, push=True)
    # The branch half of move_branch (without its database note), as the holder of epoch 2 does it.
    publish(mirror, branch_ref(5), second, push=True, drop=phase_ref(5, 1, 2), force=False)

    with pytest.raises(GitError):  # the frozen holder of epoch 1 wakes up and moves to phase 0
        publish(mirror, branch_ref(5), first, push=True, drop=phase_ref(5, 0, 1), force=False)

    assert sh_git(sample_repo, "rev-parse", branch_ref(5)) == second
    assert sh_git(sample_repo, "rev-parse", phase_ref(5, 0, 1)) == first  # atomic: nothing dropped
