"""A push to an origin on this host, in-process (workers/local_push.py), ends where `git push --atomic`
would: the objects complete in the origin (checked by `git fsck`), non-fast-forwards refused, all refs or
none, and an interrupted copy completed by the next push."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pygit2
import pytest

from api.sample_repo import make_sample_repo
from shared.errors import GitError
from workers import local_push
from workers.local_push import RefUpdate, copy_missing, local_target
from workers.publish import BranchLag, branch_ref, publish_phase
from workers.workspace import WorkspaceManager

AUTHOR = ("-c", "user.name=t", "-c", "user.email=t@t")


def _git(cwd: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True)
    return done.stdout.strip()


def _commit(work: Path, files: dict[str, str], message: str) -> str:
    for name, text in files.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(text)
    _git(work, "add", "-A")
    _git(work, *AUTHOR, "commit", "-qm", message)
    return _git(work, "rev-parse", "HEAD")


@pytest.fixture
def repos(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(work tree committing into the mirror, the mirror, the origin): the origin has the base only."""
    origin = tmp_path / "origin.git"
    _git(tmp_path, "init", "-q", "--bare", "-b", "main", str(origin))
    work = tmp_path / "work"
    _git(tmp_path, "init", "-q", "-b", "main", str(work))
    _commit(work, {"a.txt": "a\n", "src/b.py": "b = 1\n"}, "base")
    _git(work, "push", "-q", str(origin), "main")
    mirror = tmp_path / "mirror.git"
    _git(tmp_path, "clone", "-q", "--bare", str(origin), str(mirror))
    _git(work, "remote", "add", "mirror", str(mirror))
    return work, mirror, origin


def _to_mirror(work: Path) -> str:
    _git(work, "push", "-q", "--force", "mirror", "HEAD:refs/heads/work")
    return _git(work, "rev-parse", "HEAD")


def _fsck(origin: Path) -> None:
    done = subprocess.run(
        ["git", "--git-dir", str(origin), "fsck", "--full", "--no-dangling"], capture_output=True
    )
    assert done.returncode == 0, done.stderr.decode()


def _ref(origin: Path, ref: str) -> str | None:
    done = subprocess.run(
        ["git", "--git-dir", str(origin), "rev-parse", "--verify", "-q", ref], capture_output=True
    )
    return done.stdout.decode().strip() or None


def test_a_local_push_copies_only_the_missing_objects_and_leaves_the_origin_complete(repos: Any) -> None:
    work, mirror, origin = repos
    sha = _commit(work, {"src/deep/c.py": "c = 1\n"}, "phase 1")
    _to_mirror(work)
    assert local_target(mirror) == origin.resolve()

    local_push.push(mirror, origin, [RefUpdate("refs/autopack/run-1/phase-0-e1", sha)])

    assert _ref(origin, "refs/autopack/run-1/phase-0-e1") == sha
    _fsck(origin)
    src, dst = pygit2.Repository(str(mirror)), pygit2.Repository(str(origin))
    assert copy_missing(src, dst, pygit2.Oid(hex=sha)) == 0, "a second copy found objects still missing"
    # commit, root tree, src/, src/deep/ and the new blob; a.txt and src/b.py were there already
    sha2 = _commit(work, {"src/deep/c.py": "c = 2\n"}, "phase 2")
    _to_mirror(work)
    assert copy_missing(src, dst, pygit2.Oid(hex=sha2)) == 5


def test_a_non_fast_forward_is_rejected_and_no_ref_of_the_push_changes(repos: Any) -> None:
    work, mirror, origin = repos
    base = _git(work, "rev-parse", "HEAD")
    ahead = _commit(work, {"a.txt": "ahead\n"}, "ahead")
    _to_mirror(work)
    local_push.push(mirror, origin, [RefUpdate(branch_ref(7), ahead, force=False)])
    _git(work, "reset", "-q", "--hard", base)
    sibling = _commit(work, {"a.txt": "sibling\n"}, "sibling")
    _to_mirror(work)

    updates = [RefUpdate("refs/autopack/run-7/phase-1-e1", sibling), RefUpdate(branch_ref(7), sibling, False)]
    with pytest.raises(GitError, match=r"\[rejected\]"):
        local_push.push(mirror, origin, updates)

    assert _ref(origin, branch_ref(7)) == ahead
    assert _ref(origin, "refs/autopack/run-7/phase-1-e1") is None, "the atomic push wrote part of itself"


def test_a_branch_move_that_fails_falls_back_to_the_phase_ref_alone(repos: Any) -> None:
    work, mirror, origin = repos
    base = _git(work, "rev-parse", "HEAD")
    theirs = _commit(work, {"a.txt": "theirs\n"}, "someone else's")
    _to_mirror(work)
    local_push.push(mirror, origin, [RefUpdate(branch_ref(3), theirs)])
    _git(work, "reset", "-q", "--hard", base)
    head = _commit(work, {"a.txt": "ours\n"}, "phase 0")
    phase = _commit(work, {"a.txt": "ours 2\n"}, "phase 1")
    _to_mirror(work)
    _git(mirror, "update-ref", "refs/autopack/run-3/phase-0-e1", head)

    moved = publish_phase(mirror, 3, "refs/autopack/run-3/phase-1-e1", phase, True, BranchLag(head, None))

    assert moved is False
    assert _ref(origin, branch_ref(3)) == theirs
    assert _ref(origin, "refs/autopack/run-3/phase-1-e1") == phase
    _fsck(origin)


def test_a_ref_moved_between_the_check_and_the_write_is_checked_again(
    repos: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    work, mirror, origin = repos
    first = _commit(work, {"a.txt": "1\n"}, "1")
    second = _commit(work, {"a.txt": "2\n"}, "2")
    third = _commit(work, {"a.txt": "3\n"}, "3")
    _to_mirror(work)
    local_push.push(mirror, origin, [RefUpdate(branch_ref(5), first)])
    real = local_push._update_refs
    writes: list[str] = []

    def racing(git_dir: Path, stdin: str) -> None:
        if not writes:  # another writer moves the branch forward after our check
            _git(git_dir, "update-ref", branch_ref(5), second)
        writes.append(stdin)
        real(git_dir, stdin)

    monkeypatch.setattr(local_push, "_update_refs", racing)
    local_push.push(mirror, origin, [RefUpdate(branch_ref(5), third, force=False)])

    assert _ref(origin, branch_ref(5)) == third
    assert [w.split()[-1] for w in writes] == [first, second], "the retry did not check the moved value"


class _Interrupted(Exception):
    pass


class _FailingOdb:
    """The origin's object store, dying after `writes_left` writes, as a killed worker would."""

    def __init__(self, odb: pygit2.Odb, writes_left: int):
        self.odb, self.writes_left = odb, writes_left

    def __contains__(self, oid: pygit2.Oid) -> bool:
        return oid in self.odb

    def write(self, kind: int, data: bytes) -> pygit2.Oid:
        if self.writes_left == 0:
            raise _Interrupted
        self.writes_left -= 1
        return self.odb.write(kind, data)


class _Repo:
    def __init__(self, repo: pygit2.Repository, writes_left: int):
        self.odb = _FailingOdb(repo.odb, writes_left)


def test_a_copy_interrupted_after_any_write_is_completed_by_the_next_push(repos: Any, tmp_path: Path) -> None:
    work, mirror, origin = repos
    sha = _commit(work, {"src/x/y/z.py": "z = 1\n", "top.txt": "t\n"}, "phase")
    _to_mirror(work)
    src = pygit2.Repository(str(mirror))
    total = copy_missing(
        src, pygit2.Repository(str(_clone_bare(origin, tmp_path / "probe.git"))), pygit2.Oid(hex=sha)
    )
    assert total >= 6

    for writes in range(total):
        target = _clone_bare(origin, tmp_path / f"o{writes}.git")
        with pytest.raises(_Interrupted):
            copy_missing(src, _Repo(pygit2.Repository(str(target)), writes), pygit2.Oid(hex=sha))  # type: ignore[arg-type]
        local_push.push(mirror, target, [RefUpdate("refs/heads/phase", sha)])
        _fsck(target)
        assert _ref(target, "refs/heads/phase") == sha


def _clone_bare(origin: Path, to: Path) -> Path:
    _git(origin.parent, "clone", "-q", "--bare", str(origin), str(to))
    return to


def test_an_origin_that_asks_receive_pack_for_checks_or_is_a_url_is_pushed_by_git(repos: Any) -> None:
    _, mirror, origin = repos
    assert local_target(mirror) == origin.resolve()
    _git(origin, "config", "receive.denyNonFastForwards", "true")
    assert local_target(mirror) is None
    _git(origin, "config", "--unset", "receive.denyNonFastForwards")
    _git(mirror, "remote", "set-url", "origin", f"file://{origin}")
    assert local_target(mirror) is None
    _git(mirror, "remote", "set-url", "origin", str(origin))
    _git(mirror, "remote", "set-url", "--push", "origin", "ssh://example.invalid/x.git")
    assert local_target(mirror) is None


def test_a_local_origin_written_in_process_is_still_packed_by_its_own_gc_auto(tmp_path: Path) -> None:
    # receive-pack ran `git gc --auto` in the origin after every push; a push in-process runs none, so
    # the reconciler's pass does (WorkspaceManager.tend_origins), or the loose objects pile up forever.
    origin = make_sample_repo(tmp_path / "origin")
    _git(origin, "config", "gc.auto", "100")
    _git(origin, "config", "gc.autoDetach", "false")  # the test reads the result; a fleet lets it detach
    manager = WorkspaceManager(tmp_path / "workspace", slots=1)
    mirror = manager.mirror(str(origin))
    base = _git(origin, "rev-parse", "HEAD")
    mirror.ensure(base)
    repo = pygit2.Repository(str(mirror.path))
    tree = repo.TreeBuilder(repo[base].peel(pygit2.Tree))
    many = repo.TreeBuilder()
    for i in range(600):
        many.insert(f"f{i}.txt", repo.create_blob(f"{i}\n".encode()), pygit2.enums.FileMode.BLOB)
    tree.insert("many", many.write(), pygit2.enums.FileMode.TREE)
    who = pygit2.Signature("t", "t@t")
    sha = str(repo.create_commit(None, who, who, "600 files", tree.write(), [pygit2.Oid(hex=base)]))
    local_push.push(mirror.path, origin / ".git", [RefUpdate("refs/heads/many", sha)])
    assert _loose(origin / ".git") > 600

    manager.tend_origins()

    assert _loose(origin / ".git") < 50
    assert _ref(origin / ".git", "refs/heads/many") == sha
    _fsck(origin / ".git")


def _loose(git_dir: Path) -> int:
    out = _git(git_dir, "count-objects", "-v")
    return int(dict(line.split(": ") for line in out.splitlines())["count"])
