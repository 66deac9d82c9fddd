"""The per-run lease and fenced record writes, on real Postgres and on SQLite (embedded mode)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from api.sample_repo import sample_spec
from shared.db import transaction
from shared.errors import InvalidTransition, LeaseLost
from shared.models import Attempt, Phase, Run, utcnow
from shared.runs import create_run
from shared.specs import RunSpec
from shared.states import AttemptOutcome, FailureKind, PhaseState, RunState
from workers import record
from workers.lease import Lease, acquire, heartbeat
from workers.record import AttemptRecord, PhaseJob

SHORT_TTL = 0.1  # expiry is compared on the same clock, so a short sleep past it is deterministic


def make_run(url: str, repo: Path) -> tuple[int, list[int]]:
    with transaction(url) as session:
        run = create_run(session, RunSpec.model_validate(sample_spec(repo, 0)))
        return run.id, run.phase_ids


def snapshot(url: str, run_id: int) -> dict[str, Any]:
    """Everything a fenced write could change, as plain values."""
    with transaction(url) as session:
        run = session.get(Run, run_id)
        assert run is not None
        return {
            "run": {
                "state": run.state,
                "head_sha": run.head_sha,
                "lease_owner": run.lease_owner,
                "lease_epoch": run.lease_epoch,
                "failure_reason": run.failure_reason,
                "finished_at": run.finished_at,
            },
            "phases": [
                (p.state, p.commit_sha, p.attempts_used, p.dispatched_at, p.finished_at) for p in run.phases
            ],
            "attempts": session.scalar(select(func.count(Attempt.id)).where(Attempt.run_id == run_id)),
        }


def lease_row(url: str, run_id: int) -> tuple[str | None, int, Any]:
    with transaction(url) as session:
        run = session.get(Run, run_id)
        assert run is not None
        return run.lease_owner, run.lease_epoch, run.lease_expires_at


def attempt_record(number: int, sha: str | None = None) -> AttemptRecord:
    now = utcnow()
    return AttemptRecord(
        number=number,
        outcome=AttemptOutcome.SUCCESS,
        started_at=now,
        finished_at=now,
        failure_reason=None,
        builder_output="built",
        patch=None,
        changed_paths=["src/greet.py"],
        validation_output="ok",
        commit_sha=sha,
    )


def started(db_url: str, repo: Path) -> tuple[int, list[int], Lease, PhaseJob]:
    """A new run whose first phase `worker-a` has started under a fresh lease."""
    run_id, phase_ids = make_run(db_url, repo)
    lease = acquire(db_url, run_id, "worker-a", ttl=30)
    assert lease is not None
    job = record.start(lease, phase_ids[0], max_deliveries=3)
    assert isinstance(job, PhaseJob)
    return run_id, phase_ids, lease, job


def wait_past(lease: Lease) -> None:
    time.sleep(lease.ttl + 0.1)


def test_first_acquire_grants_epoch_1_to_the_owner(db_url: str, sample_repo: Path) -> None:
    run_id, _ = make_run(db_url, sample_repo)
    before = utcnow()

    lease = acquire(db_url, run_id, "worker-a", ttl=30)

    assert lease is not None
    assert (lease.run_id, lease.owner, lease.epoch) == (run_id, "worker-a", 1)
    owner, epoch, expires = lease_row(db_url, run_id)
    assert (owner, epoch) == ("worker-a", 1)
    assert expires is not None and expires > before


def test_second_acquire_while_the_lease_is_live_returns_none(db_url: str, sample_repo: Path) -> None:
    run_id, _ = make_run(db_url, sample_repo)
    assert acquire(db_url, run_id, "worker-a", ttl=30) is not None

    assert acquire(db_url, run_id, "worker-b", ttl=30) is None
    assert lease_row(db_url, run_id)[:2] == ("worker-a", 1)


def test_an_expired_lease_is_taken_over_with_the_next_epoch(db_url: str, sample_repo: Path) -> None:
    run_id, _ = make_run(db_url, sample_repo)
    first = acquire(db_url, run_id, "worker-a", ttl=SHORT_TTL)
    assert first is not None
    wait_past(first)

    second = acquire(db_url, run_id, "worker-b", ttl=30)

    assert second is not None
    assert (second.owner, second.epoch) == ("worker-b", 2)
    assert lease_row(db_url, run_id)[:2] == ("worker-b", 2)


def test_a_run_in_a_terminal_state_cannot_be_leased(db_url: str, sample_repo: Path) -> None:
    run_id, _ = make_run(db_url, sample_repo)
    with transaction(db_url) as session:
        run = session.get(Run, run_id)
        assert run is not None
        run.state = RunState.CANCELLED

    assert acquire(db_url, run_id, "worker-a", ttl=30) is None
    assert lease_row(db_url, run_id)[:2] == (None, 0)


def test_fence_renews_the_expiry_of_a_lease_still_held(db_url: str, sample_repo: Path) -> None:
    run_id, _ = make_run(db_url, sample_repo)
    lease = acquire(db_url, run_id, "worker-a", ttl=30)
    assert lease is not None
    _, _, first_expiry = lease_row(db_url, run_id)
    time.sleep(0.05)

    with transaction(db_url) as session:
        lease.fence(session)

    _, _, renewed = lease_row(db_url, run_id)
    assert renewed > first_expiry
    assert not lease.lost.is_set()


def test_a_taken_over_holder_is_fenced_and_its_record_writes_change_nothing(
    db_url: str, sample_repo: Path
) -> None:
    run_id, phase_ids = make_run(db_url, sample_repo)
    old = acquire(db_url, run_id, "worker-a", ttl=SHORT_TTL)
    assert old is not None
    job = record.start(old, phase_ids[0], max_deliveries=3)
    assert isinstance(job, PhaseJob)
    wait_past(old)
    new = acquire(db_url, run_id, "worker-b", ttl=30)
    assert new is not None and new.epoch == 2
    rows_after_takeover = snapshot(db_url, run_id)

    with pytest.raises(LeaseLost, match="epoch 1"), transaction(db_url) as session:
        old.fence(session)
    assert old.lost.is_set()
    with pytest.raises(LeaseLost):
        old.check()
    with pytest.raises(LeaseLost):
        record.attempt(old, job, attempt_record(1, "f" * 40))
    with pytest.raises(LeaseLost):
        record.succeed(old, job, attempt_record(1, "f" * 40), "f" * 40)
    with pytest.raises(LeaseLost):
        record.fail(old, job, "stale holder says it failed", FailureKind.MODEL)
    assert not old.renew()

    assert snapshot(db_url, run_id) == rows_after_takeover
    assert rows_after_takeover["attempts"] == 0
    assert rows_after_takeover["phases"][0][0] == PhaseState.EXECUTING
    assert rows_after_takeover["run"]["lease_owner"] == "worker-b"

    # the new holder's writes do land: the fence is what stopped the old one
    record.attempt(new, job, attempt_record(1, "e" * 40))
    assert snapshot(db_url, run_id)["attempts"] == 1


def test_the_old_holders_release_does_not_free_the_new_holders_lease(db_url: str, sample_repo: Path) -> None:
    run_id, _ = make_run(db_url, sample_repo)
    old = acquire(db_url, run_id, "worker-a", ttl=SHORT_TTL)
    assert old is not None
    wait_past(old)
    new = acquire(db_url, run_id, "worker-b", ttl=30)
    assert new is not None

    old.release()

    assert lease_row(db_url, run_id)[:2] == ("worker-b", 2)
    assert acquire(db_url, run_id, "worker-c", ttl=30) is None


def test_heartbeat_keeps_a_short_lease_alive_past_its_ttl(db_url: str, sample_repo: Path) -> None:
    run_id, _ = make_run(db_url, sample_repo)
    # A TTL of 1 s, not less: under a loaded CI a renewal can wait a few hundred ms for SQLite's write
    # lock or the CPU, and a 0.3 s lease then expired between two renewals (seen once in `.ci/run`).
    lease = acquire(db_url, run_id, "worker-a", ttl=1.0)
    assert lease is not None

    with heartbeat(lease, interval=0.1):
        time.sleep(2.5)  # 2.5 TTLs: without renewals the lease would be long expired
        assert acquire(db_url, run_id, "worker-b", ttl=30) is None
        assert not lease.lost.is_set()

    assert lease.renew()
    assert lease_row(db_url, run_id)[:2] == ("worker-a", 1)


def test_heartbeat_flags_the_lease_lost_once_another_holder_took_over(db_url: str, sample_repo: Path) -> None:
    run_id, _ = make_run(db_url, sample_repo)
    lease = acquire(db_url, run_id, "worker-a", ttl=SHORT_TTL)
    assert lease is not None
    wait_past(lease)
    assert acquire(db_url, run_id, "worker-b", ttl=30) is not None

    with heartbeat(lease, interval=0.05):
        deadline = time.monotonic() + 5
        while not lease.lost.is_set() and time.monotonic() < deadline:
            time.sleep(0.02)

    assert lease.lost.is_set()
    assert lease_row(db_url, run_id)[:2] == ("worker-b", 2)


def test_release_frees_the_lease_for_an_immediate_acquire(db_url: str, sample_repo: Path) -> None:
    run_id, _ = make_run(db_url, sample_repo)
    lease = acquire(db_url, run_id, "worker-a", ttl=30)
    assert lease is not None

    lease.release()

    assert lease_row(db_url, run_id)[0] is None
    nxt = acquire(db_url, run_id, "worker-b", ttl=30)
    assert nxt is not None
    assert (nxt.owner, nxt.epoch) == ("worker-b", 2)


def test_racing_acquires_on_one_run_have_exactly_one_winner(db_url: str, sample_repo: Path) -> None:
    run_id, _ = make_run(db_url, sample_repo)
    n = 8
    start = threading.Barrier(n, timeout=30)
    results: dict[str, Lease | None] = {}
    errors: list[BaseException] = []

    def race(owner: str) -> None:
        try:
            start.wait()
            results[owner] = acquire(db_url, run_id, owner, ttl=30)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=race, args=(f"worker-{i}",)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)

    assert errors == []
    assert len(results) == n
    winners = [lease for lease in results.values() if lease is not None]
    assert len(winners) == 1
    assert winners[0].epoch == 1
    assert lease_row(db_url, run_id)[:2] == (winners[0].owner, 1)


def test_start_marks_the_phase_executing_and_the_run_running(db_url: str, sample_repo: Path) -> None:
    run_id, phase_ids = make_run(db_url, sample_repo)
    lease = acquire(db_url, run_id, "worker-a", ttl=30)
    assert lease is not None

    job = record.start(lease, phase_ids[0], max_deliveries=3)

    assert isinstance(job, PhaseJob)
    assert (job.run_id, job.phase_id, job.phase_index, job.attempts_used) == (run_id, phase_ids[0], 0, 0)
    rows = snapshot(db_url, run_id)
    assert rows["run"]["state"] == RunState.RUNNING
    assert [p[0] for p in rows["phases"]] == [PhaseState.EXECUTING, PhaseState.QUEUED, PhaseState.QUEUED]


def test_complete_with_a_live_lease_moves_head_claims_the_next_phase_and_releases_the_lease(
    db_url: str, sample_repo: Path
) -> None:
    run_id, phase_ids, lease, job = started(db_url, sample_repo)
    with transaction(db_url) as session:
        nxt = session.get(Phase, phase_ids[1])
        assert nxt is not None
        nxt.dispatched_at = utcnow()

    before = utcnow()
    following = record.succeed(lease, job, attempt_record(1, "c" * 40), "c" * 40)

    assert following == phase_ids[1]
    rows = snapshot(db_url, run_id)
    assert rows["run"]["head_sha"] == "c" * 40
    assert rows["phases"][0][:2] == (PhaseState.COMPLETE, "c" * 40)
    claimed = rows["phases"][1][3]  # the outbox claim, fresh: the caller sends the next phase
    assert claimed is not None and claimed.replace(tzinfo=None) >= before.replace(tzinfo=None)
    assert rows["attempts"] == 1  # the successful attempt landed in the same transaction
    assert rows["run"]["lease_owner"] is None and lease.released  # released in that transaction too


def test_a_success_for_a_phase_that_is_not_executing_is_refused_and_writes_nothing(
    db_url: str, sample_repo: Path
) -> None:
    """The completion is one UPDATE `WHERE state = 'EXECUTING'`: a phase moved meanwhile (here handed
    back to QUEUED) makes it match nothing, and the whole transaction goes, the head the fence wrote
    and the attempt included."""
    run_id, phase_ids, lease, job = started(db_url, sample_repo)
    with transaction(db_url) as session:
        phase = session.get(Phase, phase_ids[0])
        assert phase is not None
        phase.state = PhaseState.QUEUED
    before = snapshot(db_url, run_id)

    with pytest.raises(InvalidTransition, match="phase cannot go from QUEUED to COMPLETE"):
        record.succeed(lease, job, attempt_record(1, "d" * 40), "d" * 40)

    after = snapshot(db_url, run_id)
    assert after["run"]["head_sha"] == before["run"]["head_sha"] != "d" * 40
    assert after["phases"] == before["phases"] and after["attempts"] == 0
    assert after["run"]["lease_owner"] == "worker-a" and not lease.released
