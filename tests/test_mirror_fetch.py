"""A mirror's fetch is whole or absent: a fetch killed midway never leaves a commit without its tree.

Real repositories in temp dirs. The damaged mirror is made the way a SIGKILLed `unpack-objects` leaves
one (the slot-kills test found it): the new commit's object written, its tree never.
"""

from __future__ import annotations

import subprocess
import zlib
from pathlib import Path

import pytest

import workers.workspace.mirror as mirror_mod
from tests.test_workspace import commit_file, head, sh_git
from workers.workspace import WorkspaceManager


@pytest.fixture
def manager(tmp_path: Path) -> WorkspaceManager:
    return WorkspaceManager(tmp_path / "workspace", slots=2)


def write_loose(git_dir: Path, repo: Path, sha: str) -> None:
    """Copy one object of `repo` into `git_dir` as a loose object, and nothing it points to."""
    kind = sh_git(repo, "cat-file", "-t", sha).strip()
    body = sh_git_bytes(repo, "cat-file", kind, sha)
    path = git_dir / "objects" / sha[:2] / sha[2:]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(zlib.compress(f"{kind} {len(body)}\0".encode() + body))


def sh_git_bytes(repo: Path, *args: str) -> bytes:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True).stdout


def test_a_mirror_holding_a_commit_without_its_tree_fetches_again_and_provisions(
    manager: WorkspaceManager, sample_repo: Path
) -> None:
    mirror = manager.mirror(str(sample_repo))
    mirror.ensure(head(sample_repo))
    sha = commit_file(sample_repo, "src/new.py", "NEW = 1\n", "new base")
    write_loose(mirror.path, sample_repo, sha)  # what a killed unpack left: the commit alone
    sh_git(mirror.path, "cat-file", "-e", f"{sha}^{{commit}}")
    assert not mirror.has(sha)

    with manager.worktree(str(sample_repo), sha) as wt:
        assert (wt.path / "src" / "new.py").read_text() == "NEW = 1\n"
    assert mirror.has(sha)


def test_a_fetch_keeps_what_it_brings_as_one_pack_and_no_loose_objects(
    manager: WorkspaceManager, sample_repo: Path
) -> None:
    mirror = manager.mirror(str(sample_repo))
    mirror.ensure(head(sample_repo))
    loose, packs = mirror_mod.object_counts(mirror.path)
    sha = commit_file(sample_repo, "src/more.py", "MORE = 2\n", "three new objects")

    mirror.ensure(sha)

    assert mirror_mod.object_counts(mirror.path) == (loose, packs + 1)


def test_compacting_objects_packs_many_packs_into_few(manager: WorkspaceManager, sample_repo: Path) -> None:
    mirror = manager.mirror(str(sample_repo))
    mirror.ensure(head(sample_repo))
    for n in range(6):
        mirror.ensure(commit_file(sample_repo, f"src/p{n}.py", f"P = {n}\n", f"pack {n}"))
    _, packs = mirror_mod.object_counts(mirror.path)
    assert packs >= 6  # one per fetch
    assert not mirror_mod.compact_objects(mirror.path, packs=packs)

    assert mirror_mod.compact_objects(mirror.path, packs=4)

    assert mirror_mod.object_counts(mirror.path)[1] < packs
    assert mirror.has(head(sample_repo))
