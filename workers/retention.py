"""Retention of result refs: a run's branch and phase refs go once it ended longer ago than the setting
(`result_branch_retention_days`), or once that many newer runs ended (`result_branch_retention_runs`).

Every push reads every ref of the origin (git has no protocol v2 push), so an origin that keeps every
run's branch makes every later phase slower. The reconciler prunes in bounded steps, each pass:

1. The origin: the `retention_batch` runs that ended longest ago, before the cutoff, and are not yet
   pruned (an index range over `runs(finished_at) WHERE branch_pruned_at IS NULL`, never a scan of
   every run) lose `refs/heads/autopack/run-<id>` and `refs/autopack/run-<id>/*` in the origin (when
   results are pushed: one `ls-remote` and one push per repository), then are marked
   `branch_pruned_at`. Only ended runs are chosen (a live run has no `finished_at`), and never the
   source of a live run (a campaign child starts from its source's commit, fetched from the origin).
2. This host's mirrors: of the run branches a mirror holds (only those published from this host), the
   `retention_batch` oldest run ids marked pruned in the database are deleted with their phase refs
   (kept runs are passed over). Every host does this for its own mirrors, whoever pruned the origin.

Two hosts pruning the same batch at once both push the same deletions; a ref already gone is no error.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared.db import transaction
from shared.errors import GitError
from shared.git import git, is_local
from shared.models import Run, utcnow
from shared.states import RUN_TERMINAL, RunState
from workers.workspace.locks import retrying_locks

log = logging.getLogger(__name__)

BRANCH_PREFIX = "refs/heads/autopack/run-"
PHASE_PREFIX = "refs/autopack/run-"
LIVE = [RunState.QUEUED, RunState.RUNNING]
GIT_TIMEOUT = 30.0
"""Retention runs on the reconciler's thread: an unreachable origin must not hold up re-dispatching."""


def run_ref_patterns(run_id: int) -> tuple[str, str]:
    """What a run owns in a repository: its branch (exact) and its phase refs (a prefix)."""
    return f"{BRANCH_PREFIX}{run_id}", f"{PHASE_PREFIX}{run_id}/"


def owner_of(ref: str) -> int | None:
    """The run a result ref belongs to, or None for any other ref."""
    for prefix in (BRANCH_PREFIX, PHASE_PREFIX):
        if ref.startswith(prefix):
            head = ref[len(prefix) :].split("/", 1)[0]
            return int(head) if head.isdigit() else None
    return None


@dataclass(frozen=True)
class Policy:
    """A run's refs go once it ended more than `days` ago, or once `keep_runs` runs ended after it;
    0 turns either rule off."""

    days: float = 0.0
    keep_runs: int = 0

    @property
    def active(self) -> bool:
        return self.days > 0 or self.keep_runs > 0


def cutoff(session: Session, policy: Policy) -> datetime | None:
    """Runs that ended before this are past retention (None: none is). The count rule reads the
    `keep_runs`-th newest unpruned end time: an index walk of that many entries, not of every run."""
    cutoffs = [utcnow() - timedelta(days=policy.days)] if policy.days > 0 else []
    if policy.keep_runs > 0:
        nth = session.scalar(
            select(Run.finished_at)
            .where(Run.branch_pruned_at.is_(None), Run.finished_at.is_not(None))
            .order_by(Run.finished_at.desc())
            .offset(policy.keep_runs - 1)
            .limit(1)
        )
        if nth is not None:
            cutoffs.append(nth)
    return max(cutoffs) if cutoffs else None


def expired_runs(db_url: str, policy: Policy, limit: int) -> list[tuple[int, str]]:
    """(run id, repo) of at most `limit` ended runs, oldest first, past retention and not yet pruned."""
    sources_of_live = select(Run.parent_run_id).where(Run.state.in_(LIVE), Run.parent_run_id.is_not(None))
    with transaction(db_url) as session:
        before = cutoff(session, policy)
        if before is None:
            return []
        query = (
            select(Run.id, Run.repo)
            .where(
                Run.branch_pruned_at.is_(None),
                Run.finished_at < before,
                Run.state.in_(list(RUN_TERMINAL)),
                Run.id.not_in(sources_of_live),
            )
            .order_by(Run.finished_at)
            .limit(limit)
        )
        return [(run_id, repo) for run_id, repo in session.execute(query).all()]


def mark_pruned(db_url: str, run_ids: Sequence[int]) -> None:
    with transaction(db_url) as session:
        session.execute(
            update(Run)
            .where(Run.id.in_(run_ids), Run.branch_pruned_at.is_(None))
            .values(branch_pruned_at=utcnow())
        )


def pruned_among(db_url: str, run_ids: Sequence[int]) -> set[int]:
    if not run_ids:
        return set()
    with transaction(db_url) as session:
        query = select(Run.id).where(Run.id.in_(run_ids), Run.branch_pruned_at.is_not(None))
        return set(session.scalars(query))


def remote_result_refs(scratch: Path, repo: str, run_ids: set[int]) -> list[str]:
    """The refs of these runs that the origin holds (one listing: v2 `ls-remote` sends no prefixes
    for patterns, so this reads every ref, once per pass with something to prune)."""
    out = git("ls-remote", "--refs", "--", repo, git_dir=scratch, timeout=GIT_TIMEOUT)
    refs = (line.partition("\t")[2] for line in out.splitlines())
    return [ref for ref in refs if owner_of(ref) in run_ids]


def delete_remote(scratch: Path, repo: str, run_ids: set[int]) -> None:
    """Delete these runs' refs in the origin in one atomic push: one ref transaction, so a packed-refs
    file is rewritten once, not once per ref (9,000 deletions one by one took over 30 s). A ref another
    host deleted since the listing is no error (receive-pack warns "deleting a non-existent ref")."""
    refs = remote_result_refs(scratch, repo, run_ids)
    if not refs:
        return
    deletions = (f":{ref}" for ref in refs)
    git("push", "--atomic", "--quiet", "--no-verify", "--", repo, *deletions, **_remote(scratch))


def _remote(scratch: Path) -> dict[str, Any]:
    return {"git_dir": scratch, "timeout": GIT_TIMEOUT}


def scratch_repo(workspace: Path) -> Path:
    """An empty bare repository to run `ls-remote` and deletion pushes from (they need no objects)."""
    path = workspace / "retention.git"
    if not (path / "HEAD").exists():
        git("init", "--quiet", "--bare", str(path))
    return path


def prune_origins(db_url: str, workspace: Path, policy: Policy, limit: int, push: bool) -> list[int]:
    """Step 1 of the module docstring; returns the runs marked pruned. A repository that cannot be
    reached keeps its runs unmarked, for a later pass."""
    by_repo: dict[str, set[int]] = defaultdict(set)
    for run_id, repo in expired_runs(db_url, policy, limit):
        by_repo[repo].add(run_id)
    done: list[int] = []
    for repo, run_ids in by_repo.items():
        try:
            if push and _gone(repo):
                log.info(
                    "retention: %s no longer exists; %d run(s) have nothing to prune", repo, len(run_ids)
                )
            elif push:
                delete_remote(scratch_repo(workspace), repo, run_ids)
        except GitError as exc:
            log.warning("retention: cannot prune result refs in %s: %s", repo, exc)
            continue
        mark_pruned(db_url, sorted(run_ids))
        done += sorted(run_ids)
    return done


def _gone(repo: str) -> bool:
    """A local repository that no longer exists holds no refs: its runs count as pruned. Left
    unmarked, they would be the oldest expired runs on every pass and hold back all newer ones."""
    return is_local(repo) and not Path(repo).exists()


def mirror_run_ids(mirror: Path) -> list[int]:
    """Ids of the runs whose branch this mirror holds, ascending."""
    out = git("for-each-ref", "--format=%(refname)", "refs/heads/autopack/", git_dir=mirror)
    return sorted({i for i in map(owner_of, out.splitlines()) if i is not None})


def delete_local(mirror: Path, run_ids: Iterable[int]) -> int:
    """Delete these runs' branches and phase refs in the mirror; returns how many refs went."""
    patterns = [p for run_id in run_ids for p in run_ref_patterns(run_id)]
    if not patterns:
        return 0
    refs = git("for-each-ref", "--format=%(refname)", *patterns, git_dir=mirror).split()
    if refs:
        stdin = "".join(f"delete {ref}\n" for ref in refs)
        delete = ("update-ref", "--no-deref", "--stdin")
        retrying_locks(lambda: git(*delete, git_dir=mirror, stdin=stdin), lambda: [mirror])
    return len(refs)


def mirror_dirs(workspace: Path) -> list[Path]:
    mirrors = workspace / "mirrors"
    return sorted(d for d in mirrors.glob("*.git") if (d / "HEAD").exists()) if mirrors.is_dir() else []


CHECK_CHUNK = 1000
"""Run ids asked about per query when a mirror looks for pruned runs."""


def prune_mirror(db_url: str, mirror: Path, limit: int) -> int:
    """Step 2 of the module docstring for one mirror: the `limit` oldest of its runs marked pruned
    lose their refs; returns how many refs went.

    The mirror's run ids are checked oldest first, a chunk per query, until `limit` pruned ones are
    found: runs that are kept (the newest N by end time, which need not be the highest ids) are
    passed over, not counted. Checking only the `limit` oldest ids stalled once that many of them
    were kept, and the mirror then kept every run branch it ever had (seen in the history bench:
    9,287 of them with the origin pruned to 1,000, and every push reading them all)."""
    ids = mirror_run_ids(mirror)
    found: list[int] = []
    for start in range(0, len(ids), CHECK_CHUNK):
        found += sorted(pruned_among(db_url, ids[start : start + CHECK_CHUNK]))
        if len(found) >= limit:
            break
    return delete_local(mirror, found[:limit])
