"""The validation-result store: results of validation commands by (tree, command, fingerprint).

Protocol, stated once. A validation command's result depends on the files it runs on, the command, what
ran before it in the same worktree (commands may leave files for the next), and the box and toolchain
it ran in. The worker names those as: the git tree SHA of the worktree (exactly the files, nothing
ignored or untracked beside them), the command string, the commands run before it on that tree, and a
fingerprint of the sandbox policy and toolchain (`workers/validation_cache.py`). `entry_key` hashes the
four into one primary key, so a lookup is one indexed read and a second writer of the same result
finds the first one's row (`ON CONFLICT DO NOTHING`): a result is a fact about a tree, not about a run,
so it needs no fencing, and any worker of the fleet may write or read it.

What is stored is what `workers.validation.compare` reads of a baseline (exit code, JUnit counts and
failing ids, limit) plus its time and an output tail; a timed-out command or one a limit killed is
never stored (its result says more about the host's load than about the tree). Lookups are
all-or-nothing (`lookup` returns None unless every command of the list is there), so a baseline is
either entirely remembered or entirely run, never a mix that no single run produced.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, bindparam, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from shared.db import transaction
from shared.models import ValidationResult, utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Entry:
    """One command's result on one tree under one fingerprint, in list order."""

    command: str
    prior: tuple[str, ...]
    """The commands run before this one on the same worktree."""
    result: dict[str, Any]


def entry_key(tree_sha: str, fingerprint: str, prior: Sequence[str], command: str) -> str:
    # NUL separates fields no command string can contain (bash cannot pass NUL), so keys cannot collide
    # by shifting text from one field to the next.
    text = "\0".join([tree_sha, fingerprint, str(len(prior)), *prior, command])
    return hashlib.sha256(text.encode()).hexdigest()


def _keys(tree_sha: str, fingerprint: str, commands: Sequence[str]) -> list[str]:
    return [entry_key(tree_sha, fingerprint, commands[:i], c) for i, c in enumerate(commands)]


class _NotServed(Exception):
    """Some of the commands have no stored result, or the caller would not use them."""


def lookup(
    url: str,
    tree_sha: str,
    fingerprint: str,
    commands: Sequence[str],
    accept: Callable[[list[dict[str, Any]]], bool] | None = None,
) -> list[dict[str, Any]] | None:
    """Every command's stored result, in order, or None when any is missing (or the store fails).
    `accept`: the caller serves the results only when it says yes (a pass, say); a no is a miss too,
    and the rows' hit counts stay as they were, so a hit always means results that were used."""
    if not commands:
        return None
    keys = _keys(tree_sha, fingerprint, commands)
    try:
        with transaction(url) as session:
            # One statement: counting the hit returns the rows (a SELECT then the UPDATE was two).
            served = session.execute(_SERVE, {"keys": keys})
            rows: dict[str, dict[str, Any]] = {key: result for key, result in served}
            if len(rows) < len(set(keys)):
                raise _NotServed  # rolls the counts back: a partial hit serves nothing
            results = [rows[k] for k in keys]
            if accept is not None and not accept(results):
                raise _NotServed
    except _NotServed:
        return None
    except SQLAlchemyError as exc:  # the store is an optimisation: running the commands is always right
        log.warning("validation cache lookup failed, running the commands: %s", exc)
        return None
    return results


_RESULTS = cast(Table, ValidationResult.__table__)
_SERVE = (
    update(_RESULTS)
    .where(_RESULTS.c.key.in_(bindparam("keys", expanding=True)))
    .values(hits=_RESULTS.c.hits + 1)
    .returning(_RESULTS.c.key, _RESULTS.c.result)
)
"""A Core UPDATE built once and executed with the keys, as `shared.db.insert_ignoring` builds its
INSERTs: constructing and cache-keying a statement per call costs ~0.2 ms, and every phase's baseline asks."""


def record(url: str, tree_sha: str, fingerprint: str, entries: Sequence[Entry]) -> int:
    """Store the entries (a row already there is kept); returns how many were offered."""
    if not entries:
        return 0
    values = [
        {
            "key": entry_key(tree_sha, fingerprint, e.prior, e.command),
            "tree_sha": tree_sha,
            "command": e.command,
            "fingerprint": fingerprint,
            "result": e.result,
            "hits": 0,
            "created_at": utcnow(),
        }
        for e in entries
    ]
    try:
        with transaction(url) as session:
            dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
            stmt = (
                dialect.insert(ValidationResult).values(values).on_conflict_do_nothing(index_elements=["key"])
            )
            session.execute(stmt)
    except SQLAlchemyError as exc:
        log.warning("validation cache write failed (the next baseline runs its commands): %s", exc)
        return 0
    return len(values)
