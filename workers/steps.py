"""Pipeline steps after the builder: what changed, is it allowed, does it validate, commit it.

Each step is a plain function on a worktree path so it can be tested on a real repo on its own.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from shared.errors import GitError
from shared.git import git
from shared.git_native import commit_index, head_of
from shared.specs import PhaseSpec
from workers.commands import CommandResult, run_command


def undo_builder_commits(worktree: Path, base: str) -> None:
    """A builder that committed its own change must still pass the scope check: fold its commits
    back into the index so `worktree_status` sees them, and the phase still ends as one commit."""
    if head_of(worktree) != base:
        git("reset", "--quiet", "--soft", base, cwd=worktree)


def reset(worktree: Path, sha: str) -> None:
    git("reset", "--quiet", "--hard", sha, cwd=worktree)
    git("clean", "-ffdxq", cwd=worktree)


def discard(worktree: Path) -> None:
    """Free what an attempt wrote, best effort: on a full disk `reset` may fail where `clean` works."""
    with contextlib.suppress(GitError):
        git("clean", "-ffdxq", cwd=worktree)
    with contextlib.suppress(GitError):
        git("reset", "--quiet", "--hard", cwd=worktree)


def staged_diff(worktree: Path, max_bytes: int) -> str | None:
    """The staged change as a diff: what a replay of this attempt re-applies. None when too large."""
    diff = git("diff", "--cached", "--no-color", "--no-ext-diff", cwd=worktree)
    return diff if len(diff.encode()) <= max_bytes else None


@dataclass(frozen=True)
class Status:
    paths: list[str]
    """Every path the builder added, modified or deleted (untracked included, ignored files not)."""
    ignored: bool
    """Ignored files (a build's output, say) lie in the worktree too."""


def worktree_status(worktree: Path) -> Status:
    """One `git status` for both facts. `--ignored=matching` names an ignored directory, not its
    contents, as `ls-files --others --ignored --directory` did."""
    out = git(
        "status",
        "--porcelain=v1",
        "-z",
        "--untracked-files=all",
        "--ignored=matching",
        "--no-renames",
        cwd=worktree,
    )
    entries = [entry for entry in out.split("\0") if len(entry) > 3]
    paths = sorted({entry[3:] for entry in entries if not entry.startswith("!! ")})
    return Status(paths, any(entry.startswith("!! ") for entry in entries))


def _under(path: str, prefix: str) -> bool:
    prefix = prefix.rstrip("/")
    return path == prefix or path.startswith(prefix + "/")


def scope_violations(paths: list[str], phase: PhaseSpec) -> list[str]:
    """Reasons, one per offending path; empty when every path is in scope and unprotected."""
    reasons = []
    for path in paths:
        parts = PurePosixPath(path).parts
        if path.startswith("/") or ".." in parts:
            reasons.append(f"{path}: outside the worktree")
        elif parts and parts[0].lower() == ".git":
            reasons.append(f"{path}: inside .git")
        elif any(_under(path, p) for p in phase.protected_paths):
            reasons.append(f"{path}: protected path")
        elif not any(_under(path, s) for s in phase.scope):
            reasons.append(f"{path}: outside scope {phase.scope}")
    return reasons


def stage(worktree: Path, paths: list[str]) -> None:
    """Stage exactly the builder's paths, so files validation leaves behind are never committed."""
    if paths:
        git("add", "--all", "--", *paths, cwd=worktree)


@dataclass(frozen=True)
class Validation:
    ok: bool
    results: list[CommandResult]

    def report(self) -> str:
        return "\n\n".join(r.summary() for r in self.results)

    def failure(self) -> str | None:
        bad = next((r for r in self.results if not r.ok), None)
        return None if bad is None else f"validation failed: {bad.summary()[-3000:]}"


def validate(phase: PhaseSpec, worktree: Path, *, timeout: float, max_bytes: int) -> Validation:
    results = []
    for command in phase.validation:
        result = run_command(command, worktree, timeout=timeout, max_bytes=max_bytes, network=phase.network)
        results.append(result)
        if not result.ok:
            return Validation(False, results)
    return Validation(True, results)


def missing_deliverables(phase: PhaseSpec, worktree: Path) -> list[str]:
    return [d for d in phase.deliverables if not (worktree / d).exists()]


def commit(worktree: Path, message: str, author: str) -> str:
    """Commit the staged change, an empty one too: "one commit per phase" holds for phases that
    legitimately change nothing. In-process (libgit2): `git commit` was two processes, ~10 ms."""
    name, _, email = author.partition(" <")
    return commit_index(worktree, message, name, email.rstrip(">"))
