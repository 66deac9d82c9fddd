"""The history bench's generator: the refs it writes are packed, readable by git, and leave no loose file."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.bench.history_gen import SCRATCH_REF, add_git_history, git_out


def refs(git_dir: Path, prefix: str) -> dict[str, str]:
    out = git_out("for-each-ref", "--format=%(refname) %(objectname)", prefix, git_dir=git_dir)
    return dict(tuple(line.split(" ", 1)) for line in out.splitlines())


def loose_files(git_dir: Path) -> list[Path]:
    return [p for p in (git_dir / "refs").rglob("*") if p.is_file()]


def test_generated_history_is_packed_git_readable_and_adds_to_what_was_there(sample_repo: Path) -> None:
    origin = sample_repo / ".git"
    base = git_out("rev-parse", "main", git_dir=origin).strip()
    loose_before = loose_files(origin)  # refs/heads/main, loose in a new repository
    first = add_git_history([origin], base, range(1, 31))
    second = add_git_history([origin], base, range(31, 61))
    branches = refs(origin, "refs/heads/autopack")
    assert branches == {f"refs/heads/autopack/run-{i}": sha for i, sha in (first | second).items()}
    assert len(set(branches.values())) == 60  # a commit per run
    fenced = refs(origin, "refs/autopack")
    assert set(fenced) == {f"refs/autopack/run-{i}/phase-1-e2" for i in range(10, 61, 10)}
    assert refs(origin, SCRATCH_REF) == {}
    assert refs(origin, "refs/heads/main") == {"refs/heads/main": base}  # was loose, now packed
    assert loose_before and loose_files(origin) == []
    for sha in (first[7], second[44]):
        assert git_out("rev-parse", f"{sha}^", git_dir=origin).strip() == base
    fsck = subprocess.run(
        ["git", "--git-dir", str(origin), "fsck", "--strict"], capture_output=True, text=True
    )
    assert fsck.returncode == 0, fsck.stderr
