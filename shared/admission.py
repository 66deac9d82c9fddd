"""What the API checks before it stores a run, beyond the spec's shape: size limits and the repository
allowlist. Both come from settings, and both fail as `InvalidSpec` naming the field."""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from shared.errors import InvalidSpec
from shared.git import is_local
from shared.settings import Settings
from shared.specs import RunSpec

URL_SCHEMES = frozenset({"https", "http", "ssh", "git"})
CHECKOUT = Path(__file__).resolve().parent.parent
"""Autopack's own source tree: no run may fetch from or push into it (git would find it from any
directory inside it), except its `.autopack/` state dir, where `autopack demo` makes its sample repo."""


def admit(spec: RunSpec, settings: Settings) -> None:
    """Raise `InvalidSpec` unless the spec is within the size limits and names an allowed repository."""
    check_limits(spec, settings)
    check_repo(spec.repo, settings)


# --- sizes --------------------------------------------------------------------------------------------


def check_limits(spec: RunSpec, settings: Settings) -> None:
    if len(spec.phases) > settings.max_phases_per_run:
        raise InvalidSpec("phases", f"at most {settings.max_phases_per_run} phases per run")
    for loc, value in _leaves(spec.model_dump(mode="json"), ()):
        field = ".".join(str(part) for part in loc)
        if isinstance(value, list) and len(value) > settings.max_list_items:
            raise InvalidSpec(field, f"at most {settings.max_list_items} entries")
        if isinstance(value, str):
            cap = settings.max_goal_chars if loc[-1] == "goal" else settings.max_string_chars
            if len(value) > cap:
                raise InvalidSpec(field, f"at most {cap} characters")


def _leaves(value: Any, loc: tuple[str | int, ...]) -> Iterator[tuple[tuple[str | int, ...], Any]]:
    """Every list and string in a dumped spec, with where it sits (`phases.0.scope`)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, (*loc, key))
    elif isinstance(value, list):
        if loc[-1] != "phases":  # phases have their own limit
            yield loc, value
        for i, item in enumerate(value):
            yield from _leaves(item, (*loc, i))
    elif isinstance(value, str):
        yield loc, value


# --- repositories ---------------------------------------------------------------------------------------


def check_repo(repo: str, settings: Settings) -> None:
    """`repo` must match an allowed pattern and stay clear of the workspace and Autopack's checkout."""
    if "\x00" in repo or any(c.isspace() for c in repo):
        raise InvalidSpec("repo", "must not contain whitespace or NUL")
    target = _local_target(repo)
    if target is not None:
        _refuse_own_dirs(target, settings)
        candidate = str(target)
    else:
        candidate = _checked_url(repo)
    patterns = settings.repo_patterns
    if not any(pattern_regex(p).fullmatch(candidate) for p in patterns):
        allowed = ", ".join(patterns) if patterns else "none (set AUTOPACK_ALLOWED_REPOS)"
        raise InvalidSpec("repo", f"{candidate} is not an allowed repository; allowed: {allowed}")


def _local_target(repo: str) -> Path | None:
    """The resolved path of a local repository (also `file://`), or None for a remote URL."""
    if repo.lower().startswith("file://"):
        return Path(urlsplit(repo).path).resolve()
    if is_local(repo):
        if "::" in repo:  # git's `<transport>::<address>` syntax (ext:: runs commands)
            raise InvalidSpec("repo", "transport helpers (`<transport>::`) are not allowed")
        return Path(repo).resolve()
    return None


def _refuse_own_dirs(target: Path, settings: Settings) -> None:
    workspace = settings.workspace_dir.resolve()
    if _overlaps(target, workspace):
        raise InvalidSpec("repo", f"{target} overlaps the workspace dir")
    if _overlaps(target, CHECKOUT) and not target.is_relative_to(CHECKOUT / ".autopack"):
        raise InvalidSpec("repo", f"{target} overlaps Autopack's own checkout")


def _overlaps(target: Path, own: Path) -> bool:
    return target == own or own in target.parents or target in own.parents


def _checked_url(repo: str) -> str:
    if "://" in repo:
        parts = urlsplit(repo)
        if parts.scheme.lower() not in URL_SCHEMES:
            raise InvalidSpec("repo", f"URL scheme must be one of {', '.join(sorted(URL_SCHEMES))}")
        if parts.password is not None:
            raise InvalidSpec("repo", "credentials do not belong in the URL (use a git credential helper)")
        if parts.query or parts.fragment:
            raise InvalidSpec("repo", "must not carry a query or a fragment")
        path = parts.path
    else:
        path = repo.split(":", 1)[1]  # scp-like user@host:path
    if ".." in path.split("/") or "%2e" in path.lower():
        raise InvalidSpec("repo", "must not contain '..' (plain or percent-encoded)")
    return repo


@lru_cache(maxsize=256)
def pattern_regex(pattern: str) -> re.Pattern[str]:
    """A glob as a regex: `**` matches anything, `*` and `?` stay within one `/`-separated part."""
    out = []
    for token in re.split(r"(\*\*|\*|\?)", pattern):
        out.append({"**": ".*", "*": "[^/]*", "?": "[^/]"}.get(token, re.escape(token)))
    return re.compile("".join(out))
