"""Result refs at scale: mirrors never take every run's refs, and expired runs' refs are pruned.

Real git repositories; the retention tests on Postgres and SQLite.
"""

from __future__ import annotations

import shutil
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

import workers.workspace.mirror as mirror_mod
from shared.db import transaction
from shared.errors import GitError
from shared.models import Run, utcnow
from shared.runs import create_run
from shared.settings import Settings
from shared.specs import RunSpec
from shared.states import RunState
from tests.test_workspace import commit_file, head, sh_git
from workers import retention
from workers.publish import branch_ref, phase_ref, publish
from workers.runtime import Reconciler
from workers.workspace import WorkspaceManager


@pytest.fixture
def manager(tmp_path: Path) -> WorkspaceManager:
    return WorkspaceManager(tmp_path / "workspace", slots=2)


def refs(git_dir: Path, prefix: str = "refs/") -> list[str]:
    out = subprocess.run(
        ["git", "--git-dir", str(git_dir), "for-each-ref", "--format=%(refname)", prefix],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out.split()


def run_branch_in_origin(origin: Path, run_id: int, *texts: str) -> list[str]:
    """Commits on `autopack/run-<id>` of the origin, as another host's phases leave them (one per text),
    plus a fenced holder's leftover phase ref; returns the commits, oldest first."""
    base = head(origin)
    shas = [commit_file(origin, f"src/r{run_id}_{i}.py", text, f"phase {i}") for i, text in enumerate(texts)]
    sh_git(origin, "update-ref", branch_ref(run_id), shas[-1])
    sh_git(origin, "update-ref", phase_ref(run_id, 0, 1), shas[0])
    sh_git(origin, "reset", "--quiet", "--hard", base)  # main stays where it was
    return shas


def test_a_mirror_takes_branches_and_tags_but_no_run_branch_or_phase_ref(
    manager: WorkspaceManager, sample_repo: Path
) -> None:
    run_branch_in_origin(sample_repo, 7, "x = 1\n")
    sh_git(sample_repo, "tag", "v1")
    mirror = manager.mirror(str(sample_repo))

    mirror.ensure(head(sample_repo))
    later = commit_file(sample_repo, "src/later.py", "L = 1\n", "later")
    mirror.ensure(later)  # a fetch, after the clone

    names = refs(mirror.path)
    assert "refs/heads/main" in names and "refs/tags/v1" in names
    assert not [n for n in names if n.startswith(("refs/heads/autopack/", "refs/autopack/run-"))]


def test_a_commit_only_on_another_runs_branch_is_fetched_by_sha_without_listing_refs(
    manager: WorkspaceManager, sample_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A failed_phases campaign child starts from its source run's commit: on autopack/run-<source>
    # in the origin, and not its tip (a later phase followed).
    mirror = manager.mirror(str(sample_repo))
    mirror.ensure(head(sample_repo))
    first, _ = run_branch_in_origin(sample_repo, 9, "a = 1\n", "a = 2\n")
    trace = tmp_path / "packets.txt"
    monkeypatch.setenv("GIT_TRACE_PACKET", str(trace))

    mirror.ensure(first)

    assert mirror.has(first)
    assert "autopack/run-9" not in trace.read_text(), "the fetch listed the origin's run refs"
    assert not [n for n in refs(mirror.path) if n.startswith("refs/heads/autopack/")]
    assert refs(mirror.path, mirror_mod.FETCHED_PREFIX) == [f"{mirror_mod.FETCHED_PREFIX}{first[:2]}"]


def test_an_origin_refusing_sha_wants_still_yields_a_commit_on_a_run_branch(
    manager: WorkspaceManager, sample_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mirror = manager.mirror(str(sample_repo))
    mirror.ensure(head(sample_repo))
    (result,) = run_branch_in_origin(sample_repo, 11, "b = 1\n")
    real = mirror_mod.git

    def refusing(*args: str, **kwargs: object) -> str:
        if args[0] == "fetch" and any(a.startswith(f"+{result}") for a in args):
            raise GitError("git fetch failed (128): fatal: remote error: not our ref")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(mirror_mod, "git", refusing)
    mirror.ensure(result)

    assert mirror.has(result)


def test_compacting_refs_writes_a_commit_graph(manager: WorkspaceManager, sample_repo: Path) -> None:
    mirror = manager.mirror(str(sample_repo))
    mirror.ensure(head(sample_repo))
    graphs = mirror.path / "objects" / "info" / "commit-graphs"
    assert not graphs.exists()

    assert mirror_mod.compact_refs(mirror.path, limit=0)

    assert list(graphs.glob("*.graph"))


def test_compacting_objects_packs_reachable_loose_objects_and_keeps_unreachable_ones(
    manager: WorkspaceManager, sample_repo: Path
) -> None:
    mirror = manager.mirror(str(sample_repo))
    with manager.worktree(str(sample_repo), head(sample_repo)) as wt:
        sha = commit_file(wt.path, "src/x.py", "X = 1\n", "a phase")  # loose, reachable from a worktree
        dangling = sh_git(wt.path, "hash-object", "-w", "--stdin")  # an empty blob, unreachable
    before = mirror_mod.loose_objects(mirror.path)
    assert before >= 3

    assert mirror_mod.compact_objects(mirror.path, limit=0)

    assert mirror_mod.loose_objects(mirror.path) < before
    assert mirror.has(sha)
    sh_git(mirror.path, "cat-file", "-e", dangling)  # never pruned


def test_compacting_objects_leaves_few_loose_objects_alone(
    manager: WorkspaceManager, sample_repo: Path
) -> None:
    mirror = manager.mirror(str(sample_repo))
    mirror.ensure(head(sample_repo))
    assert not mirror_mod.compact_objects(mirror.path)


# Retention


def settings(db_url: str, workspace: Path, **overrides: object) -> Settings:
    return Settings(
        database_url=db_url,
        broker_url="memory://",
        workspace_dir=workspace,
        log_level="WARNING",
        _env_file=None,  # type: ignore[call-arg]
        **overrides,  # type: ignore[arg-type]
    )


def new_run(
    db_url: str, repo: Path, state: RunState, ended_days_ago: float | None, parent: int | None = None
) -> int:
    spec = RunSpec.model_validate(
        {
            "repo": str(repo),
            "config": {"builder": "script"},
            "phases": [{"name": "p", "scope": ["src/"], "command": "true"}],
        }
    )
    with transaction(db_url) as session:
        run = session.get(Run, create_run(session, spec, parent_run_id=parent).id)
        assert run is not None
        run.state = state
        if ended_days_ago is not None:
            run.finished_at = utcnow() - timedelta(days=ended_days_ago)
        return run.id


def published_run(manager: WorkspaceManager, repo: Path, run_id: int) -> str:
    """A run's result as a phase left it: branch and a leftover phase ref, in the mirror and the origin."""
    with manager.worktree(str(repo), head(repo)) as wt:
        sha = commit_file(wt.path, f"src/run_{run_id}.py", f"R = {run_id}\n", "phase 0")
    mirror = manager.mirror(str(repo)).path
    publish(mirror, phase_ref(run_id, 0, 2), sha, push=True)
    publish(mirror, branch_ref(run_id), sha, push=True)
    return sha


def pruned_at(db_url: str) -> dict[int, bool]:
    with transaction(db_url) as session:
        rows = session.execute(select(Run.id, Run.branch_pruned_at)).all()
    return {run_id: at is not None for run_id, at in rows}


def test_retention_prunes_only_runs_ended_before_the_cutoff_in_origin_and_mirror(
    db_url: str, sample_repo: Path, tmp_path: Path
) -> None:
    s = settings(db_url, tmp_path / "workspace", result_branch_retention_days=30)
    manager = WorkspaceManager(s.workspace_dir, 2)
    old = new_run(db_url, sample_repo, RunState.DONE_SUCCESS, ended_days_ago=40)
    failed = new_run(db_url, sample_repo, RunState.DONE_FAILED, ended_days_ago=31)
    recent = new_run(db_url, sample_repo, RunState.DONE_SUCCESS, ended_days_ago=2)
    live = new_run(db_url, sample_repo, RunState.RUNNING, ended_days_ago=None)
    for run_id in (old, failed, recent, live):
        published_run(manager, sample_repo, run_id)
    mirror = manager.mirror(str(sample_repo)).path

    Reconciler(s, dispatcher=None)._retain()  # type: ignore[arg-type]

    for repo in (sample_repo / ".git", mirror):
        names = refs(repo)
        for gone in (old, failed):
            assert branch_ref(gone) not in names and phase_ref(gone, 0, 2) not in names
        for kept in (recent, live):
            assert branch_ref(kept) in names and phase_ref(kept, 0, 2) in names
    assert pruned_at(db_url) == {old: True, failed: True, recent: False, live: False}


def test_one_pass_prunes_at_most_a_batch_oldest_first(db_url: str, sample_repo: Path, tmp_path: Path) -> None:
    s = settings(db_url, tmp_path / "workspace", retention_batch=1)
    manager = WorkspaceManager(s.workspace_dir, 2)
    newer = new_run(db_url, sample_repo, RunState.DONE_SUCCESS, ended_days_ago=40)
    older = new_run(db_url, sample_repo, RunState.DONE_SUCCESS, ended_days_ago=50)
    for run_id in (newer, older):
        published_run(manager, sample_repo, run_id)
    reconciler = Reconciler(s, dispatcher=None)  # type: ignore[arg-type]

    reconciler._retain()
    assert pruned_at(db_url) == {newer: False, older: True}
    assert branch_ref(newer) in refs(sample_repo / ".git")

    reconciler._retain()
    assert pruned_at(db_url) == {newer: True, older: True}
    assert not refs(sample_repo / ".git", "refs/heads/autopack/")


def test_the_source_of_a_live_campaign_child_keeps_its_branch(
    db_url: str, sample_repo: Path, tmp_path: Path
) -> None:
    source = new_run(db_url, sample_repo, RunState.DONE_FAILED, ended_days_ago=60)
    new_run(db_url, sample_repo, RunState.QUEUED, ended_days_ago=None, parent=source)
    assert retention.expired_runs(db_url, retention.Policy(days=30), 10) == []
    with transaction(db_url) as session:
        session.execute(update(Run).where(Run.parent_run_id == source).values(state=RunState.CANCELLED))
    expected = [(source, str(sample_repo.resolve()))]
    assert retention.expired_runs(db_url, retention.Policy(days=30), 10) == expected


def test_retention_zero_keeps_every_branch(db_url: str, sample_repo: Path, tmp_path: Path) -> None:
    s = settings(
        db_url, tmp_path / "workspace", result_branch_retention_days=0, result_branch_retention_runs=0
    )
    manager = WorkspaceManager(s.workspace_dir, 2)
    old = new_run(db_url, sample_repo, RunState.DONE_SUCCESS, ended_days_ago=4000)
    published_run(manager, sample_repo, old)

    Reconciler(s, dispatcher=None)._retain()  # type: ignore[arg-type]

    assert branch_ref(old) in refs(sample_repo / ".git")
    assert pruned_at(db_url) == {old: False}


def test_a_mirror_drops_runs_another_host_pruned_and_keeps_the_rest(
    db_url: str, sample_repo: Path, tmp_path: Path
) -> None:
    s = settings(db_url, tmp_path / "workspace")
    manager = WorkspaceManager(s.workspace_dir, 2)
    gone = new_run(db_url, sample_repo, RunState.DONE_SUCCESS, ended_days_ago=40)
    kept = new_run(db_url, sample_repo, RunState.DONE_SUCCESS, ended_days_ago=1)
    for run_id in (gone, kept):
        published_run(manager, sample_repo, run_id)
    retention.mark_pruned(db_url, [gone])  # the origin was pruned by another host's reconciler
    mirror = manager.mirror(str(sample_repo)).path

    assert retention.prune_mirror(db_url, mirror, limit=10) == 2

    assert refs(mirror, "refs/heads/autopack/") == [branch_ref(kept)]
    assert branch_ref(gone) in refs(sample_repo / ".git")  # the origin is not this step's business


def test_a_mirror_whose_oldest_runs_are_all_kept_still_drops_the_pruned_ones_behind_them(
    db_url: str, sample_repo: Path, tmp_path: Path
) -> None:
    """Runs kept by the count cap need not be the highest ids: ended late, they sit at the front of the
    mirror's oldest-first order. A pass must look past them, not stall on them."""
    s = settings(db_url, tmp_path / "workspace")
    manager = WorkspaceManager(s.workspace_dir, 2)
    kept = [new_run(db_url, sample_repo, RunState.DONE_SUCCESS, ended_days_ago=1) for _ in range(3)]
    gone = [new_run(db_url, sample_repo, RunState.DONE_SUCCESS, ended_days_ago=40) for _ in range(3)]
    for run_id in (*kept, *gone):
        published_run(manager, sample_repo, run_id)
    retention.mark_pruned(db_url, gone)
    mirror = manager.mirror(str(sample_repo)).path

    assert retention.prune_mirror(db_url, mirror, limit=2) == 4  # the 2 oldest pruned: branch + phase ref
    assert refs(mirror, "refs/heads/autopack/") == sorted(branch_ref(r) for r in [*kept, gone[2]])
    assert retention.prune_mirror(db_url, mirror, limit=2) == 2
    assert refs(mirror, "refs/heads/autopack/") == sorted(branch_ref(r) for r in kept)


def test_a_deletion_another_host_made_first_is_no_error(
    manager: WorkspaceManager, sample_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    published_run(manager, sample_repo, 21)
    published_run(manager, sample_repo, 22)
    scratch = retention.scratch_repo(manager.root)
    real = retention.remote_result_refs
    listings: list[list[str]] = []

    def stale_once(scratch: Path, repo: str, run_ids: set[int]) -> list[str]:
        listed = real(scratch, repo, run_ids)
        if not listings:  # another host deletes run 21's branch right after this listing
            sh_git(sample_repo, "update-ref", "-d", branch_ref(21))
        listings.append(listed)
        return listed

    monkeypatch.setattr(retention, "remote_result_refs", stale_once)
    retention.delete_remote(scratch, str(sample_repo), {21, 22})

    assert len(listings) == 1 and branch_ref(21) in listings[0]
    origin = sample_repo / ".git"
    assert not refs(origin, "refs/autopack/") + refs(origin, "refs/heads/autopack/")


def test_pooled_worktrees_keep_no_reflog_that_grows_per_phase(
    manager: WorkspaceManager, sample_repo: Path
) -> None:
    mirror = manager.mirror(str(sample_repo))
    for i in range(3):
        with manager.worktree(str(sample_repo), head(sample_repo)) as wt:
            commit_file(wt.path, "src/x.py", f"X = {i}\n", f"phase {i}")
    assert not list((mirror.path / "worktrees").glob("*/logs/HEAD"))


def test_dropping_reflogs_removes_those_of_a_mirror_cloned_before_and_stops_new_ones(
    manager: WorkspaceManager, sample_repo: Path
) -> None:
    mirror = manager.mirror(str(sample_repo))
    mirror.ensure(head(sample_repo))
    sh_git(mirror.path, "config", "core.logAllRefUpdates", "true")  # as an older mirror had it
    with manager.worktree(str(sample_repo), head(sample_repo)) as wt:
        commit_file(wt.path, "src/x.py", "X = 1\n", "phase 0")
    assert list((mirror.path / "worktrees").glob("*/logs/HEAD"))

    mirror_mod.drop_reflogs(mirror.path)
    with manager.worktree(str(sample_repo), head(sample_repo)) as wt:
        commit_file(wt.path, "src/x.py", "X = 2\n", "phase 1")

    assert not list((mirror.path / "worktrees").glob("*/logs/HEAD"))


def test_runs_of_a_deleted_local_repository_are_marked_pruned_and_hold_back_no_newer_run(
    db_url: str, sample_repo: Path, tmp_path: Path
) -> None:
    s = settings(db_url, tmp_path / "workspace", retention_batch=1)
    manager = WorkspaceManager(s.workspace_dir, 2)
    gone_repo = tmp_path / "deleted"
    shutil.copytree(sample_repo, gone_repo)
    orphan = new_run(db_url, gone_repo, RunState.DONE_SUCCESS, ended_days_ago=60)
    shutil.rmtree(gone_repo)
    newer = new_run(db_url, sample_repo, RunState.DONE_SUCCESS, ended_days_ago=40)
    published_run(manager, sample_repo, newer)
    reconciler = Reconciler(s, dispatcher=None)  # type: ignore[arg-type]

    reconciler._retain()
    reconciler._retain()

    assert pruned_at(db_url) == {orphan: True, newer: True}
    assert branch_ref(newer) not in refs(sample_repo / ".git")


def test_a_count_cap_prunes_all_but_the_newest_runs_whatever_their_age(
    db_url: str, sample_repo: Path, tmp_path: Path
) -> None:
    ended = {
        new_run(db_url, sample_repo, RunState.DONE_SUCCESS, ended_days_ago=d): d for d in (5, 4, 3, 2, 1)
    }
    new_run(db_url, sample_repo, RunState.RUNNING, ended_days_ago=None)
    policy = retention.Policy(days=30, keep_runs=2)

    expired = [run_id for run_id, _ in retention.expired_runs(db_url, policy, 10)]

    assert expired == sorted(ended, key=lambda run_id: -ended[run_id])[:3]  # the three oldest, oldest first
    assert retention.expired_runs(db_url, retention.Policy(days=30, keep_runs=5), 10) == []
    assert retention.expired_runs(db_url, retention.Policy(), 10) == []
