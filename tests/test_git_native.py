"""In-process ref resolution (libgit2) agrees with the git CLI, and says why when it cannot."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from shared.errors import GitError
from shared.git import resolve_ref
from shared.git_native import head_of, head_tree_of, resolve_local


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


def test_an_abbreviated_sha_and_a_subdirectory_resolve(repo: Path) -> None:
    full = _git(repo, "rev-parse", "HEAD~1")
    (repo / "sub").mkdir()
    assert resolve_local(repo / "sub", full[:8]) == full


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
