"""Validation paid once per tree: the worker's side of `shared/validation_cache.py`.

Protocol, stated once. A phase's after-validation runs on its staged change; when the phase succeeds,
that staged tree is exactly the tree the run's next phase starts from, so its results are recorded
(`remember_after`) and the next phase's baseline looks them up (`cached_baseline`) instead of running
the suite again, on whichever worker it lands. A baseline that misses runs and is recorded too, so a
replay campaign over the same base commit runs its baseline once. A change whose staged tree already
passed these commands (the starting tree itself, or a tree another run built) reads that pass instead of
running (`passed_before`); a recorded failure is run again. The key is the tree SHA, the command
(and those before it), and `fingerprint()`: the sandbox policy and toolchain. Reuse is safe because
the inputs that decide a command's result are the same: the files are identical (a tree SHA names their
content and modes; a worktree with ignored or untracked files beside its tree is not recorded), the
box has no network unless the phase and the operator both allow it (then the fingerprint says so),
HOME and /tmp start empty, and what the box can see of the host (policy, limits, uid, PATH and the
interpreters on it, their installed packages) is in the fingerprint. A timeout or a killed command is
never stored. What stays outside the key, on purpose: wall-clock time and randomness inside tests (a
flaky test's recorded result is one sample, as a fresh baseline would be), and git state other than
the tree (HEAD, index) that a command could read with `git diff HEAD`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from shared import validation_cache as store
from shared.git_native import head_tree_of, index_tree
from shared.settings import Settings
from workers.commands import default_backend
from workers.sandbox.policy import path_dirs
from workers.validation import CommandValidation, JUnitCounts, ValidationRun

OUTPUT_TAIL_BYTES = 2000
"""A remembered baseline's output is never shown (reports show the after-run); a tail is kept to explain."""
TOOLS = ("python", "python3", "pytest", "node", "npm", "go", "cargo", "rustc", "java", "mvn", "gcc", "make")
"""Programs whose identity (resolved path, size, mtime) goes into the fingerprint: an upgrade changes it."""
ENV_VARIABLES = ("PATH", "LANG", "LC_ALL", "TZ", "PYTHONPATH", "VIRTUAL_ENV", "NODE_PATH", "GOFLAGS")
"""Worker variables a box (or, unboxed, a command) can see that change what a command does."""


# --- the fingerprint -------------------------------------------------------------------------------


def _file_identity(path: str | None) -> list[Any]:
    if path is None:
        return []
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except OSError:
        return [real]
    return [real, st.st_size, st.st_mtime_ns]


def _site_packages(path_value: str) -> list[list[Any]]:
    """Package directories of the worker's Python and of every venv on PATH; installing or upgrading a
    package adds or removes a `*.dist-info` entry, which changes the directory's mtime."""
    roots = {Path(sys.prefix), Path(sys.base_prefix)}
    roots |= {d.parent for d in path_dirs(path_value) if (d.parent / "pyvenv.cfg").is_file()}
    dirs = sorted(p for r in roots for p in r.glob("lib/python*/site-packages"))
    return [_file_identity(str(d)) for d in dirs]


TOOLCHAIN_SECONDS = 5.0
"""How long a toolchain reading is reused. A phase takes it twice (its baseline, then its own
result), ~3 ms each; a tool or package installed on a live worker is seen within this long."""
_TOOLCHAINS: dict[str, tuple[float, dict[str, Any]]] = {}


def toolchain(path_value: str) -> dict[str, Any]:
    taken = _TOOLCHAINS.get(path_value)
    if taken is not None and time.monotonic() - taken[0] < TOOLCHAIN_SECONDS:
        return taken[1]
    reading = _toolchain(path_value)
    _TOOLCHAINS[path_value] = (time.monotonic(), reading)
    return reading


def _toolchain(path_value: str) -> dict[str, Any]:
    return {
        "python": [sys.version, sys.executable],
        "env": {k: os.environ.get(k) for k in ENV_VARIABLES} | {"PATH": path_value},
        "tools": {t: _file_identity(shutil.which(t, path=path_value)) for t in TOOLS},
        "site_packages": _site_packages(path_value),
    }


def fingerprint(settings: Settings, network: bool) -> str:
    """sha256 of what, beside the tree and the command, decides a validation command's result here."""
    backend = default_backend()
    policy = backend.policy
    boxed = backend.name != "none"
    basis = {
        "backend": backend.name,
        "as_root": boxed and os.geteuid() == 0,
        # hidden_paths name this host's workspace and .env: never visible, so they change no result
        # and must not keep two workers with different workspace directories from sharing results.
        "policy": policy.model_dump(mode="json", exclude={"hidden_paths"}),
        "network": (network and policy.network == "allow") or not boxed,
        "timeout": settings.command_timeout_seconds,
        "toolchain": toolchain(os.environ.get("PATH", "/usr/bin:/bin")),
    }
    return hashlib.sha256(json.dumps(basis, sort_keys=True, default=str).encode()).hexdigest()


# --- results <-> rows ------------------------------------------------------------------------------


def storable(result: CommandValidation) -> bool:
    """A result worth reusing: it ended on its own (no timeout, no limit killed it)."""
    return not result.timed_out and not (result.limit or "").startswith("killed")


def to_row(result: CommandValidation) -> dict[str, Any]:
    tail = result.output.encode(errors="replace")[-OUTPUT_TAIL_BYTES:].decode(errors="replace")
    counts = result.counts
    return {
        "exit_code": result.exit_code,
        "seconds": round(result.seconds, 3),
        "limit": result.limit,
        "counts": None if counts is None else [counts.passed, counts.failed, counts.errors, counts.skipped],
        "failing_ids": sorted(result.failing_ids),
        "output_tail": tail,
    }


def from_row(command: str, row: dict[str, Any]) -> CommandValidation:
    counts = row.get("counts")
    return CommandValidation(
        command=command,
        exit_code=int(row["exit_code"]),
        output=str(row.get("output_tail", "")),
        seconds=float(row.get("seconds", 0.0)),
        timed_out=False,
        counts=None if counts is None else JUnitCounts(*counts),
        failing_ids=frozenset(row.get("failing_ids", ())),
        limit=row.get("limit"),
    )


def _entries(run: ValidationRun) -> list[store.Entry]:
    """The stored prefix of the run: after a result that cannot be stored, later ones are not either,
    since each one's key says which commands ran before it on the tree."""
    commands = [r.command for r in run.results]
    out: list[store.Entry] = []
    for i, result in enumerate(run.results):
        if not storable(result):
            break
        out.append(store.Entry(result.command, tuple(commands[:i]), to_row(result)))
    return out


# --- the two call sites ----------------------------------------------------------------------------


def head_tree(worktree: Path) -> str:
    return head_tree_of(worktree)  # in-process: a `rev-parse` was a process, twice a phase


def staged_tree(worktree: Path, ignored: bool) -> str | None:
    """The tree of the index when the worktree holds exactly it: None when `ignored` files (a builder's
    build output, say, as `steps.worktree_status` saw) lie beside it, since validation would see files
    the tree does not name."""
    return None if ignored else index_tree(worktree)  # in-process: `write-tree` was two processes


def cached_baseline(
    settings: Settings, worktree: Path, commands: list[str], network: bool
) -> tuple[str, ValidationRun | None]:
    """(tree, the remembered baseline or None). `worktree` must be freshly provisioned (reset + clean)."""
    tree = head_tree(worktree)
    rows = store.lookup(settings.database_url, tree, fingerprint(settings, network), commands)
    if rows is None:
        return tree, None
    return tree, ValidationRun(
        tuple(from_row(c, r) for c, r in zip(commands, rows, strict=True)), reused=True, tree=tree
    )


def passed_before(
    settings: Settings, tree: str | None, commands: list[str], network: bool, baseline: ValidationRun
) -> ValidationRun | None:
    """The change's validation without running it, when its tree already passed these commands: the
    phase's own baseline when the change left the files as they were, else any worker's record. Only a
    pass is read back: a failure runs again, since its whole output is what the Doctor and the next
    attempt read (the store keeps a tail), and a second sample of a failure is worth its time."""
    if tree is None or not commands:
        return None
    if baseline.tree == tree:
        return replace(baseline, reused=True) if _reusable(baseline) else None
    url, key = settings.database_url, fingerprint(settings, network)
    rows = store.lookup(url, tree, key, commands, accept=lambda r: _reusable(_stored(commands, r, tree)))
    return None if rows is None else replace(_stored(commands, rows, tree), reused=True)


def _stored(commands: list[str], rows: list[dict[str, Any]], tree: str) -> ValidationRun:
    return ValidationRun(tuple(map(from_row, commands, rows)), tree=tree)


def _reusable(run: ValidationRun) -> bool:
    return run.ok and not any(r.limit for r in run.results)


def remember(settings: Settings, tree: str | None, run: ValidationRun, network: bool) -> int:
    """Record the run's storable results for `tree`; returns how many were offered."""
    if tree is None or run.reused:
        return 0
    return store.record(settings.database_url, tree, fingerprint(settings, network), _entries(run))


def remember_after(
    settings: Settings, worktree: Path, tree: str | None, run: ValidationRun, network: bool
) -> int:
    """After a successful commit: record the after-validation if the commit's tree is the tree it ran
    on (an unboxed command could have staged more in between)."""
    if tree is None or run.reused or head_tree(worktree) != tree:
        return 0
    return remember(settings, tree, run, network)
