"""The chaos batch's evidence checks fail when their evidence says so (made-up records, no services):
a check that cannot fail checks nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from shared.settings import Settings
from tests.chaos.batch import BatchResult
from tests.chaos.checks import (
    Record,
    answered_calls_recorded_once,
    no_overlap,
    no_worker_exited_alone,
    no_write_accepted_after_takeover,
    tokens_add_up,
    woken_holders_were_refused,
)
from tests.chaos.config import ChaosConfig
from tests.chaos.faults import ChaosState, Fenced
from tests.chaos.llm import USAGE, Answered

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
OLD, NEW, LATER = (
    "vm/100/aaaa",
    "vm/200/bbbb",
    "vm/100/cccc",
)  # the frozen holder, its successor, its next lease


def record(tmp_path: Path, **kw: Any) -> Record:
    state = ChaosState()
    state.fenced = [Fenced(7, OLD, 1, T0, NEW, 2, T0 + timedelta(seconds=5), T0 + timedelta(seconds=6))]
    res = BatchResult(
        ChaosConfig(stops=1), [7], 1, state, 1.0, tmp_path, [], tmp_path, kw.pop("answered", [])
    )
    phase = SimpleNamespace(deliveries=1)
    fields: dict[str, Any] = dict(runs={}, by_run={7: [phase]}, attempts=[], efficiency=[], usage=[])
    fields.update(refusals=[], writes=[])
    fields.update(kw)
    return Record(res, Settings(_env_file=None), **fields)  # type: ignore[call-arg]


def write(at: int, app: str, old: str | None, new: str | None, xid: int = 1) -> SimpleNamespace:
    when = T0 + timedelta(seconds=at)
    owners = dict(old_owner=old, new_owner=new, old_epoch=2, new_epoch=2)
    return SimpleNamespace(at=when, xid=xid, app=app, tbl="runs", run_id=7, **owners)


def test_a_write_of_the_woken_holder_that_slipped_into_its_successors_lease_fails_the_check(
    tmp_path: Path,
) -> None:
    slipped = record(tmp_path, writes=[write(8, "w0/100", NEW, NEW)])
    assert not no_write_accepted_after_takeover(slipped).ok
    unfenced = record(tmp_path, writes=[write(8, "w0/100", None, None)])
    assert not no_write_accepted_after_takeover(unfenced).ok
    own_later_lease = [write(8, "w0/100", None, LATER, xid=1), write(9, "w0/100", LATER, None, xid=2)]
    assert no_write_accepted_after_takeover(record(tmp_path, writes=own_later_lease)).ok


def test_a_woken_holder_without_a_refused_write_after_it_woke_fails_the_check(tmp_path: Path) -> None:
    before = SimpleNamespace(at=T0 + timedelta(seconds=2), app="w0/100")
    assert not woken_holders_were_refused(record(tmp_path, refusals=[before])).ok
    other = SimpleNamespace(at=T0 + timedelta(seconds=7), app="w0/101")
    assert not woken_holders_were_refused(record(tmp_path, refusals=[other])).ok
    after = SimpleNamespace(at=T0 + timedelta(seconds=7), app="w0/100")
    assert woken_holders_were_refused(record(tmp_path, refusals=[after])).ok


def test_an_answered_call_recorded_never_or_twice_fails_the_check(tmp_path: Path) -> None:
    calls = [Answered("w0", f"req_{n}", 0, 0, 10.0 + n, 10.3 + n) for n in range(5)]
    rows = [SimpleNamespace(request_id=a.request_id, run_id=7) for a in calls]
    assert answered_calls_recorded_once(record(tmp_path, answered=calls, usage=rows)).ok
    assert not answered_calls_recorded_once(record(tmp_path, answered=calls, usage=rows[1:])).ok
    assert not answered_calls_recorded_once(record(tmp_path, answered=calls, usage=[*rows, rows[0]])).ok
    assert not answered_calls_recorded_once(record(tmp_path, answered=calls[:4], usage=rows[:4])).ok
    assert sum(USAGE.values()) > 0


def test_two_executions_of_one_run_that_overlap_fail_the_check(tmp_path: Path) -> None:
    lines = [
        "B 10.0 0 1 50",
        "E 11.0 0 1 50",
        "B 12.0 1 2 60",
        "E 13.0 1 2 60",
        "B 14.0 2 3 50",
        "E 15.0 2 3 50",
    ]
    (tmp_path / "chaos-0").write_text("\n".join(lines) + "\n")
    assert no_overlap(record(tmp_path)).ok
    lines[2] = "B 10.5 1 2 60"  # phase 1 begins while phase 0's command still runs
    (tmp_path / "chaos-0").write_text("\n".join(lines) + "\n")
    assert not no_overlap(record(tmp_path)).ok


def test_a_call_lost_to_a_kill_passes_only_when_charged_and_redelivered(tmp_path: Path) -> None:
    calls = [Answered("w0", f"req_{n}", 0, 0, 10.0 + n, 10.3 + n) for n in range(5)]
    rows = [SimpleNamespace(request_id=a.request_id, run_id=7) for a in calls[1:]]
    charge = SimpleNamespace(
        at=T0, tbl="runs", run_id=7, old_reserved=900, new_reserved=0, old_epoch=2, new_epoch=3
    )
    charge.old_spent, charge.new_spent = 0, 900
    lost = record(tmp_path, answered=calls, usage=rows, writes=[charge])
    lost.res.state.kill_log.append(("w0", 11.0))
    assert not answered_calls_recorded_once(lost).ok  # its phase was never delivered again
    lost.by_run[7][0].deliveries = 2
    assert answered_calls_recorded_once(lost).ok
    lost.writes.clear()
    assert not answered_calls_recorded_once(lost).ok  # nobody charged its reservation


def _ledger(spent: int) -> dict[int, Any]:
    return {i: SimpleNamespace(tokens_spent=s, tokens_reserved=0) for i, s in ((7, spent), (1, 0))}


def test_a_call_charged_while_its_holder_was_frozen_and_recorded_after_counts_once_as_its_charge(
    tmp_path: Path,
) -> None:
    charge = SimpleNamespace(
        at=T0 + timedelta(seconds=5), tbl="runs", run_id=7, old_epoch=1, new_epoch=2,
        old_reserved=4000, new_reserved=0, old_spent=1000, new_spent=5000,
    )  # fmt: skip
    settled = SimpleNamespace(
        run_id=7, phase_id=70, call_key="run7:phase70:e1:a1:builder:1", created_at=T0,
        input_tokens=600, output_tokens=400,
    )  # fmt: skip
    late = SimpleNamespace(
        run_id=7, phase_id=70, call_key="run7:phase70:e1:a1:builder:2", created_at=T0 + timedelta(seconds=9),
        input_tokens=5000, output_tokens=940,
    )  # fmt: skip
    usage = [
        settled,
        late,
        *[SimpleNamespace(**{**settled.__dict__, "run_id": 99, "phase_id": 99}) for _ in range(30)],
    ]
    efficiency = [SimpleNamespace(phase_id=70, tokens_spent=1000 + 5940)]
    base = dict(writes=[charge], usage=usage, efficiency=efficiency)
    assert tokens_add_up(record(tmp_path, runs=_ledger(5000), **base)).ok, "1000 settled + 4000 charged"
    counted_twice = tokens_add_up(record(tmp_path, runs=_ledger(5000 + 5940), **base))
    assert not counted_twice.ok and "run 7: spent 10940 != usage 1000 + charged 4000" in counted_twice.detail


def test_a_worker_that_exited_with_no_fault_killing_it_fails_the_check(tmp_path: Path) -> None:
    assert no_worker_exited_alone(record(tmp_path)).ok
    crashed = record(tmp_path)
    crashed.res.state.exited = ["w2#1 exit 1: CRITICAL celery.worker: Unrecoverable error: AttributeError"]
    check = no_worker_exited_alone(crashed)
    assert not check.ok and "w2#1 exit 1" in check.detail
