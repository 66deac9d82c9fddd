"""Does this host work? Provision a worktree of a small repository of its own and write into it.

The probe repository lives in the workspace and is made once, so a probe exercises exactly what a
phase needs of the host - free disk, git, a mirror, the worktree pool - and nothing of any origin's.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from shared.errors import GitError, HostFault, WorkspaceError
from shared.git import git
from workers.workspace import WorkspaceManager


def probe(workspace: WorkspaceManager, min_free_bytes: int) -> None:
    """Return when the host can run a phase; raise HostFault naming what failed otherwise."""
    workspace.require_free(min_free_bytes)
    try:
        origin = _probe_origin(workspace.root / "probe" / "origin")
        sha = git("rev-parse", "HEAD", cwd=origin).strip()
        with workspace.worktree(str(origin), sha) as wt:
            (wt.path / "probe.txt").write_text("written by the host probe\n")
            git("status", "--porcelain", cwd=wt.path)
    except (WorkspaceError, GitError, OSError) as exc:
        raise HostFault(f"host probe failed: {exc}") from exc


def _probe_origin(path: Path) -> Path:
    try:
        git("rev-parse", "--verify", "--quiet", "HEAD^{commit}", cwd=path)
        return path
    except GitError:
        shutil.rmtree(path, ignore_errors=True)  # missing, or half made by a killed probe
    path.mkdir(parents=True)
    git("init", "--quiet", "--initial-branch=main", cwd=path)
    (path / "README").write_text("The worker's host probe checks out this repository.\n")
    git("add", "README", cwd=path)
    ident = ["-c", "user.name=autopack probe", "-c", "user.email=probe@localhost"]
    git(*ident, "commit", "--quiet", "-m", "host probe", cwd=path)
    return path
