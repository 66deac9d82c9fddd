"""The repository-config scan that disarms program-naming keys is reused only while the config is
byte-for-byte the same: counted at the process boundary (a logging `git` first on PATH)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from shared.git import git


@pytest.fixture
def calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    log = tmp_path / "git-calls.log"
    shim = tmp_path / "bin" / "git"
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec {shutil.which("git")} "$@"\n')
    shim.chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim.parent}{os.pathsep}{os.environ['PATH']}")
    log.touch()
    return log


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    (root / "a.txt").write_text("a\n")
    return root


def scans(log: Path) -> int:
    return sum(" config --show-scope " in f" {line} " for line in log.read_text().splitlines())


def test_an_unchanged_config_is_scanned_once(calls: Path, repo: Path) -> None:
    for _ in range(5):
        git("status", "--porcelain", cwd=repo)
    assert scans(calls) == 1
    assert sum(" status " in f" {line} " for line in calls.read_text().splitlines()) == 5


def test_a_filter_planted_after_the_scan_is_still_disarmed(calls: Path, repo: Path, tmp_path: Path) -> None:
    git("status", "--porcelain", cwd=repo)  # the scan of the clean config is now reused
    marker = tmp_path / "filter-ran"
    subprocess.run(
        ["git", "-C", str(repo), "config", "filter.evil.clean", f"touch {marker}; cat"], check=True
    )
    (repo / ".gitattributes").write_text("*.txt filter=evil\n")
    git("add", "a.txt", cwd=repo)
    assert scans(calls) == 2, "the changed config was scanned again"
    assert not marker.exists()


def test_a_config_with_an_include_is_scanned_every_time(calls: Path, repo: Path, tmp_path: Path) -> None:
    included = tmp_path / "included.cfg"
    included.write_text("[core]\n\tabbrev = 12\n")
    subprocess.run(["git", "-C", str(repo), "config", "include.path", str(included)], check=True)
    git("status", "--porcelain", cwd=repo)
    marker = tmp_path / "filter-ran"
    included.write_text(f'[filter "evil"]\n\tclean = touch {marker}; cat\n')  # the includer is unchanged
    (repo / ".gitattributes").write_text("*.txt filter=evil\n")
    git("add", "a.txt", cwd=repo)
    assert scans(calls) == 2
    assert not marker.exists()


def test_a_linked_worktree_reuses_the_scan_of_its_own_config(calls: Path, repo: Path, tmp_path: Path) -> None:
    subprocess.run(
        ["git", "-C", str(repo), "commit", "-q", "--allow-empty", "-m", "x"],
        check=True,
        env={
            **os.environ,
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@t",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@t",
        },
    )
    slot = tmp_path / "slot"
    subprocess.run(["git", "-C", str(repo), "worktree", "add", "-q", "--detach", str(slot)], check=True)
    before = scans(calls)
    for _ in range(3):
        git("status", "--porcelain", cwd=slot)
    assert scans(calls) - before == 1


def test_a_receive_or_upload_pack_program_the_repository_names_never_runs_in_a_push_or_fetch(
    repo: Path, tmp_path: Path
) -> None:
    # A local remote's receive-pack/upload-pack is a program, run with the worker's rights; the
    # mirror's config is the repository's to write when phases run unboxed (AUTOPACK_SANDBOX=none).
    ran = tmp_path / "ran"
    origin = tmp_path / "origin.git"
    subprocess.run(["git", "init", "-q", "--bare", str(origin)], check=True)
    identity = ["-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "-C", str(repo), *identity, "commit", "-qm", "a", "--allow-empty"], check=True)
    git("remote", "add", "origin", str(origin), cwd=repo)
    git("config", "remote.origin.receivepack", f"touch {ran}; git-receive-pack", cwd=repo)
    git("config", "remote.origin.uploadpack", f"touch {ran}; git-upload-pack", cwd=repo)

    git("push", "--quiet", "origin", "HEAD:refs/heads/pushed", cwd=repo)
    git("fetch", "--quiet", "origin", "refs/heads/pushed:refs/remotes/origin/pushed", cwd=repo)

    assert git("rev-parse", "refs/remotes/origin/pushed", cwd=repo) == git("rev-parse", "HEAD", cwd=repo)
    assert not ran.exists(), "the repository's receive-pack/upload-pack ran"
