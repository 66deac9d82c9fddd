"""Thin, typed wrapper over the git CLI. Every failure is a GitError carrying git's own words."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from shared.errors import GitError

SHA_RE = re.compile(r"^[0-9a-f]{40}$")

# Never prompt for credentials, never read the system config.
_ENV = {
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_CONFIG_NOSYSTEM": "1",
    "LC_ALL": "C",
}
# A builder's command can write into the mirror a worktree points at; code it plants there (hooks,
# core.fsmonitor) must never run from the worker's own git calls, and never with the worker's secrets.
_SAFE = ["-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false"]
# Phases on one host update refs of the same mirror concurrently (and the reconciler packs them):
# wait up to a second for a ref lock, as git does for packed-refs, instead of failing after 100 ms.
_SAFE += ["-c", "core.filesRefLockTimeout=1000"]
SECRET_PREFIXES = ("AUTOPACK_", "ANTHROPIC_", "FLOWER_", "POSTGRES_", "AWS_", "PG")


def scrubbed_env() -> dict[str, str]:
    """The worker's environment without its secrets, for anything that may run repository code."""
    return {k: v for k, v in os.environ.items() if not k.startswith(SECRET_PREFIXES)}


def git(*args: str, cwd: Path | None = None, git_dir: Path | None = None, timeout: float = 300) -> str:
    cmd = ["git", *_SAFE]
    if git_dir is not None:
        cmd += ["--git-dir", str(git_dir)]
    cmd += list(args)
    env = {**scrubbed_env(), **_ENV}
    try:
        done = subprocess.run(
            cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise GitError(f"git {args[0]} timed out after {timeout:.0f}s") from exc
    except OSError as exc:
        raise GitError(f"cannot run git: {exc}") from exc
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip()[-2000:]
        raise GitError(f"git {' '.join(args[:2])} failed ({done.returncode}): {detail}")
    return done.stdout


def is_local(repo: str) -> bool:
    return "://" not in repo and not re.match(r"^[\w.-]+@[\w.-]+:", repo)


def resolve_ref(repo: str, ref: str) -> str:
    """The commit SHA `ref` names in `repo` (a path or a URL), or GitError saying why not."""
    if is_local(repo):
        path = Path(repo)
        if not path.exists():
            raise GitError(f"repository {repo} does not exist")
        return git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", cwd=path, timeout=30).strip()
    if SHA_RE.match(ref):
        return ref
    out = git("ls-remote", "--", repo, ref, f"refs/heads/{ref}", f"refs/tags/{ref}", timeout=60)
    for line in out.splitlines():
        sha, _, name = line.partition("\t")
        if name in (ref, f"refs/heads/{ref}", f"refs/tags/{ref}^{{}}", f"refs/tags/{ref}"):
            return sha
    raise GitError(f"ref {ref} not found in {repo}")
