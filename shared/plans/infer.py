"""What a plan's code spans mean in the repository at a commit: scope (existing paths and their test
files), deliverables (new paths in create/add sentences), validation (the toolchain). Each value comes
with its source, a sentence a reviewer can check."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from pydantic import TypeAdapter, ValidationError

from shared.errors import GitError
from shared.git import git
from shared.plans.parse import Mention
from shared.specs import RepoPath
from shared.toolchain import infer_toolchain

MAX_READ_BYTES = 1_000_000
"""Toolchain files bigger than this are treated as unreadable."""
_CREATE = re.compile(r"\b(create|creates|creating|add|adds|adding|new|write|introduce|scaffold)\b", re.I)
_PATH_LIKE = re.compile(r"^[\w.@+-]+(?:/[\w.@+-]+)*/?$")
_EXTENSION = re.compile(r"\.[A-Za-z0-9]{1,8}$")
_REPO_PATH: TypeAdapter[str] = TypeAdapter(RepoPath)


@dataclass(frozen=True)
class Sourced:
    """An inferred value and where it came from."""

    value: str
    source: str


@dataclass(frozen=True)
class Note:
    """Something the plan says that did not become part of the draft, and why."""

    line: int | None
    message: str


@dataclass(frozen=True)
class RepoTree:
    """The regular files of a local repository at one commit, read through git (no checkout)."""

    repo: Path
    sha: str
    blobs: dict[str, tuple[str, int]]
    """path -> (blob id, size in bytes)."""
    by_name: dict[str, list[str]] = field(default_factory=dict)
    dirs: frozenset[str] = frozenset()

    @classmethod
    def load(cls, repo: Path, sha: str) -> RepoTree:
        """Every regular file at `sha` (`git ls-tree -r -l`), indexed by path and by file name."""
        out = git("ls-tree", "-r", "-l", "-z", sha, cwd=repo, timeout=60)
        blobs: dict[str, tuple[str, int]] = {}
        for entry in filter(None, out.split("\0")):
            meta, _, path = entry.partition("\t")
            mode, kind, obj, size = meta.split()
            if kind == "blob" and mode in ("100644", "100755"):
                blobs[path] = (obj, int(size))
        by_name: dict[str, list[str]] = {}
        for path in sorted(blobs):
            by_name.setdefault(PurePosixPath(path).name, []).append(path)
        dirs = frozenset(str(parent) for path in blobs for parent in PurePosixPath(path).parents)
        return cls(repo, sha, blobs, by_name, dirs - {"."})

    @property
    def short(self) -> str:
        return self.sha[:12]

    def is_file(self, path: str) -> bool:
        return path in self.blobs

    def is_dir(self, path: str) -> bool:
        return path.rstrip("/") in self.dirs

    def read_text(self, path: str) -> str | None:
        found = self.blobs.get(path)
        if found is None or found[1] > MAX_READ_BYTES:
            return None
        try:
            return git("cat-file", "blob", found[0], cwd=self.repo, timeout=30)
        except (GitError, UnicodeDecodeError):
            return None

    def any_match(self, directory: str, pattern: str) -> bool:
        prefix = directory.rstrip("/") + "/"
        names = (p[len(prefix) :] for p in self.blobs if p.startswith(prefix))
        return any("/" not in name and fnmatch.fnmatch(name, pattern) for name in names)


@dataclass
class PhasePaths:
    """What one phase's mentions gave: scope and deliverables with sources, and what was left out."""

    scope: list[Sourced] = field(default_factory=list)
    deliverables: list[Sourced] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)

    def has(self, path: str) -> bool:
        return any(s.value == path for s in self.scope)


def looks_like_path(text: str) -> bool:
    """A code span that names a file or directory (`src/a.py`, `docs/`, `setup.cfg`), not code."""
    if not _PATH_LIKE.match(text) or text.startswith("-"):
        return False
    if "/" not in text and not _EXTENSION.search(text):
        return False
    try:
        _REPO_PATH.validate_python(text.rstrip("/") or text)
    except ValidationError:
        return False
    return True


def phase_paths(mentions: tuple[Mention, ...], tree: RepoTree) -> PhasePaths:
    """Scope from mentioned paths that exist at the commit (plus their test files), deliverables from
    missing paths in create/add sentences; every other path-like span becomes a note."""
    out = PhasePaths()
    for mention in mentions:
        if looks_like_path(mention.text):
            _place(mention, tree, out)
    for item in list(out.scope):
        _add_tests(item.value, tree, out)
    return out


def _place(mention: Mention, tree: RepoTree, out: PhasePaths) -> None:
    path = mention.text.rstrip("/")
    where = f"mentioned in line {mention.line}: `{mention.text}`"
    if tree.is_file(path) or tree.is_dir(path):
        kind = "exists" if tree.is_file(path) else "a directory"
        _add(out.scope, path, f"{where} ({kind} at {tree.short})")
        return
    matches = tree.by_name.get(path, []) if "/" not in path else []
    if len(matches) == 1:
        _add(out.scope, matches[0], f"{where}, the only file of that name at {tree.short}")
        return
    if _CREATE.search(mention.sentence):
        _add(out.deliverables, path, f'{where}, to be created ("{_short(mention.sentence)}")')
        _add(out.scope, path, f"deliverable of line {mention.line}: `{mention.text}`")
        return
    reason = f"{len(matches)} files are called that" if matches else f"does not exist at {tree.short}"
    message = f"`{mention.text}` {reason} and no create/add sentence names it; not in scope"
    out.notes.append(Note(mention.line, message))


def _add_tests(path: str, tree: RepoTree, out: PhasePaths) -> None:
    """Test files named after `path` (`test_x.py`, `x_test.go`, `x.test.ts`, `x.spec.ts`) join the scope."""
    pure = PurePosixPath(path)
    if not tree.is_file(path) or pure.name.startswith("test_"):
        return
    stem, ext = pure.stem, pure.suffix
    for name in (f"test_{stem}{ext}", f"{stem}_test{ext}", f"{stem}.test{ext}", f"{stem}.spec{ext}"):
        for test in tree.by_name.get(name, []):
            if not out.has(test):
                _add(out.scope, test, f"test file of {path} (exists at {tree.short})")


def _add(items: list[Sourced], value: str, source: str) -> None:
    if all(s.value != value for s in items):
        items.append(Sourced(value, source))


def _short(sentence: str, limit: int = 80) -> str:
    return sentence if len(sentence) <= limit else sentence[: limit - 1] + "…"


def validation(tree: RepoTree) -> Sourced | None:
    """The toolchain's test command at the commit, by the rules the pipeline uses on a worktree."""
    inferred = infer_toolchain(tree)
    if inferred is None:
        return None
    return Sourced(inferred.command, f"{inferred.reason} at {tree.short}")
