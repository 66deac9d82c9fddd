"""In-process git (libgit2) agrees with the git CLI: ref resolution, and the phase commit."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from shared.errors import GitError
from shared.git import resolve_ref
from shared.git_native import (
    cleaned,
    commit_index,
    head_of,
    head_tree_of,
    index_tree,
    move_detached_head,
    resolve_local,
    set_refs,
)
from workers.workspace.locks import retrying_locks


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    _git(root, "init", "-q", "-b", "main")
    for i in range(3):
        (root / "f.txt").write_text(f"{i}\n")
        _git(root, "add", "f.txt")
        _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", f"c{i}")
    _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "tag", "-a", "v1", "-m", "annotated", "HEAD~1")
    _git(root, "branch", "side", "HEAD~2")
    return root


@pytest.mark.parametrize("ref", ["main", "HEAD", "HEAD~1", "v1", "side", "refs/heads/side", "main^"])
def test_native_resolution_equals_the_cli(repo: Path, ref: str) -> None:
    expected = _git(repo, "rev-parse", "--verify", f"{ref}^{{commit}}")
    assert resolve_local(repo, ref) == expected
    assert resolve_ref(str(repo), ref) == expected


def test_an_abbreviated_sha_resolves_in_the_repository_and_its_git_dir(repo: Path) -> None:
    full = _git(repo, "rev-parse", "HEAD~1")
    assert resolve_local(repo, full[:8]) == full
    assert resolve_local(repo / ".git", full[:8]) == full  # git clones that path too


def test_a_folder_inside_the_repository_is_refused_naming_the_repository(repo: Path) -> None:
    (repo / "sub").mkdir()
    with pytest.raises(GitError, match=f"inside the git repository at {repo}"):
        resolve_local(repo / "sub", "HEAD")


@pytest.mark.parametrize("ref", ["missing", "HEAD:f.txt", "HEAD^{tree}", "main..side", "--help"])
def test_what_names_no_commit_is_a_git_error(repo: Path, ref: str) -> None:
    with pytest.raises(GitError, match="is not a commit"):
        resolve_local(repo, ref)


def test_a_directory_outside_any_repository_is_named(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(GitError, match="not inside a git repository"):
        resolve_local(plain, "main")


def test_head_of_a_linked_worktree_is_its_own_head(repo: Path, tmp_path: Path) -> None:
    slot = tmp_path / "slot"
    _git(repo, "worktree", "add", "--quiet", "--detach", str(slot), "side")
    assert head_of(slot) == _git(repo, "rev-parse", "side") != head_of(repo)
    with pytest.raises(GitError, match="cannot read HEAD"):
        head_of(tmp_path)


def test_head_tree_of_a_linked_worktree_is_its_own_head_s_tree(repo: Path, tmp_path: Path) -> None:
    slot = tmp_path / "slot"
    _git(repo, "worktree", "add", "--quiet", "--detach", str(slot), "side")
    assert head_tree_of(slot) == _git(repo, "rev-parse", "side^{tree}") != head_tree_of(repo)
    with pytest.raises(GitError, match="cannot read HEAD's tree"):
        head_tree_of(tmp_path)


def test_a_native_commit_is_the_index_on_the_detached_head_of_a_linked_worktree(
    repo: Path, tmp_path: Path
) -> None:
    mirror, slot = tmp_path / "mirror.git", tmp_path / "slot"  # as the workspace pool has them
    _git(tmp_path, "clone", "--quiet", "--bare", str(repo), str(mirror))
    _git(mirror, "config", "core.logAllRefUpdates", "false")
    _git(mirror, "worktree", "add", "--quiet", "--detach", str(slot), "side")
    (slot / "new.txt").write_text("new\n")
    (slot / "untracked.txt").write_text("not staged\n")
    _git(slot, "add", "new.txt")
    staged_tree = _git(slot, "write-tree")
    assert index_tree(slot) == staged_tree
    sha = commit_index(slot, "autopack: phase 1  \n\n\n goal\t\n\n", "Autopack", "autopack@localhost")
    assert _git(slot, "rev-parse", "HEAD") == sha != _git(repo, "rev-parse", "side")
    assert _git(slot, "rev-parse", "HEAD^{tree}") == staged_tree
    assert _git(slot, "rev-parse", "HEAD^") == _git(repo, "rev-parse", "side")
    assert _git(slot, "log", "-1", "--format=%an <%ae>|%cn <%ce>") == (
        "Autopack <autopack@localhost>|Autopack <autopack@localhost>"
    )
    assert _git(slot, "log", "-1", "--format=%B") == "autopack: phase 1\n\n goal"
    assert _git(slot, "status", "--porcelain") == "?? untracked.txt"  # the index matches the commit
    assert _git(mirror, "rev-parse", "HEAD") == _git(repo, "rev-parse", "main")  # the mirror's did not move
    record = Path(_git(slot, "rev-parse", "--absolute-git-dir"))
    assert not (record / "logs").exists()  # a slot keeps no reflog to grow phase after phase


def test_a_detached_head_moves_under_git_s_lock_and_not_past_a_holder_or_a_move(
    repo: Path, tmp_path: Path
) -> None:
    slot = tmp_path / "slot"
    _git(repo, "worktree", "add", "--quiet", "--detach", str(slot), "main")
    record = Path(_git(slot, "rev-parse", "--absolute-git-dir"))
    before = _git(slot, "rev-parse", "HEAD")
    (record / "HEAD.lock").write_text("held\n")  # a git of someone else's, mid-write
    with pytest.raises(GitError, match="cannot lock ref 'HEAD'"):
        commit_index(slot, "m", "A", "a@x")
    assert _git(slot, "rev-parse", "HEAD") == before
    assert (record / "HEAD.lock").read_text() == "held\n"  # not ours to drop
    (record / "HEAD.lock").unlink()
    side = _git(repo, "rev-parse", "side")
    with pytest.raises(GitError, match="HEAD moved"):
        move_detached_head(record, side, before)  # HEAD is at `before`, not `side`
    assert not (record / "HEAD.lock").exists() and _git(slot, "rev-parse", "HEAD") == before
    sha = commit_index(slot, "m", "A", "a@x")
    assert _git(slot, "rev-parse", "HEAD") == sha and _git(slot, "rev-parse", "HEAD^") == before
    assert (record / "HEAD").read_text() == f"{sha}\n" and not (record / "HEAD.lock").exists()


def test_a_native_commit_of_an_unchanged_index_is_an_empty_commit(repo: Path, tmp_path: Path) -> None:
    slot = tmp_path / "slot"
    _git(repo, "worktree", "add", "--quiet", "--detach", str(slot), "main")
    before = _git(slot, "rev-parse", "HEAD")
    sha = commit_index(slot, "nothing changed", "A", "a@x")
    assert _git(slot, "rev-parse", "HEAD^") == before and sha != before
    assert _git(slot, "rev-parse", "HEAD^{tree}") == _git(slot, "rev-parse", f"{before}^{{tree}}")


def test_a_native_commit_on_a_branch_moves_the_branch_and_a_missing_repository_is_named(
    repo: Path, tmp_path: Path
) -> None:
    sha = commit_index(repo, "m", "A", "a@x")
    assert _git(repo, "rev-parse", "main") == sha and _git(repo, "symbolic-ref", "HEAD") == "refs/heads/main"
    with pytest.raises(GitError, match="commit in"):
        commit_index(tmp_path / "nowhere", "m", "A", "a@x")


@pytest.mark.parametrize(
    "message",
    ["a\n\n\nb  \n\n", "\n\n  x\t\n", "a\r\nb", "one line", "trailing\n\n\n", "  \n\t\n", "a\n \nb"],
)
def test_message_cleanup_is_git_stripspace(message: str) -> None:
    expected = subprocess.run(
        ["git", "stripspace"], input=message, capture_output=True, text=True, check=True
    )
    assert cleaned(message) == expected.stdout


def test_native_ref_updates_move_every_ref_and_a_dead_process_s_lock_is_waited_out_then_dropped(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    head, older = _git(repo, "rev-parse", "HEAD"), _git(repo, "rev-parse", "HEAD~1")
    set_refs(repo / ".git", {"refs/autopack/run-1/phase-0-e1": head, "refs/heads/autopack/run-1": older})
    assert _git(repo, "rev-parse", "refs/autopack/run-1/phase-0-e1", "autopack/run-1").split() == [
        head,
        older,
    ]

    lock = repo / ".git" / "refs" / "heads" / "autopack" / "run-1.lock"
    lock.write_text("")  # as a killed git or worker leaves it
    with pytest.raises(GitError, match="cannot lock ref"):
        set_refs(repo / ".git", {"refs/heads/autopack/run-1": head})
    monkeypatch.setattr("workers.workspace.locks.STALE_REF_LOCK_SECONDS", 0.0)
    monkeypatch.setattr("workers.workspace.locks.time.sleep", lambda _: None)
    retrying_locks(
        lambda: set_refs(repo / ".git", {"refs/heads/autopack/run-1": head}), lambda: [repo / ".git"]
    )
    assert not lock.exists()
    assert _git(repo, "rev-parse", "autopack/run-1") == head
