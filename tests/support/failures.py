"""Seeded failure history: three new failure shapes among noise, for mining and measuring rules."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import select

from api.sample_repo import sample_spec
from shared.db import transaction
from shared.models import Attempt, Phase, utcnow
from shared.runs import create_run
from shared.specs import RunSpec
from shared.states import AttemptOutcome
from shared.telemetry import record_usage

PYTEST_HEAD = (
    "============================= test session starts ==============================\n"
    "collected 3 items\n\ntests/test_x.py F..\n"
    "=================================== FAILURES ===================================\n"
    "________________________________ test_x ________________________________\n"
    "    def test_x():\n>       run()\n"
)


def pytest_failure(error_line: str, where: str = "tests/test_x.py:12") -> str:
    """Pytest's report of one failing test whose error line is `error_line`."""
    return (
        f"{PYTEST_HEAD}E   {error_line}\n{where}: Error\n"
        "=========================== short test summary info ============================\n"
        f"FAILED tests/test_x.py::test_x - {error_line[:40]}\n"
        "============================== 1 failed in 0.12s ===============================\n"
    )


def frob(i: int) -> str:
    return f"FrobnicatorError: quota exceeded for widget {17 + i} after {i + 1}.{i}s"


def linker(i: int) -> str:
    return f"error: linker could not resolve symbol _zz_init_{i} in /tmp/build-{i:04x}/obj/m{i}.o"


def drift(i: int) -> str:
    return f"ConfigDriftError: key timeout drifted from {30 + i} to {45 + i} at config/app{i}.toml:{i + 3}"


SHAPES = {"frob": frob, "linker": linker, "drift": drift}
"""Shape -> (occurrences, runs): ranked by occurrences x runs, frob 6x4=24, drift 3x3=9, linker 4x2=8."""
PLAN = {"frob": (6, 4), "drift": (3, 3), "linker": (4, 2)}
DOCTOR = {"frob": ("retry_with_fix", 900), "linker": ("mark_fatal", 700), "drift": ("retry_with_fix", 500)}
NOISE = [
    "KeyError: 'user_name'",
    "AssertionError: assert 'Hi, Ada!' == 'Hello, Ada!'",
    "TypeError: add() takes 2 positional arguments but 3 were given",
    "ZeroDivisionError: division by zero",
    "RecursionError: maximum recursion depth exceeded while calling a Python object",
]


@dataclass
class History:
    run_ids: list[int] = field(default_factory=list)
    by_shape: dict[str, list[int]] = field(default_factory=dict)
    """Attempt ids of each shape."""


class Seeder:
    def __init__(self, url: str, repo: Path) -> None:
        self.url = url
        self.repo = repo
        self.next_number: dict[int, int] = {}
        self.phases: list[int] = []

    def run(self) -> int:
        with transaction(self.url) as session:
            run = create_run(session, RunSpec.model_validate(sample_spec(self.repo, 0)))
            phase_id = session.scalars(select(Phase.id).where(Phase.run_id == run.id, Phase.index == 0)).one()
        self.phases.append(phase_id)
        return run.id

    def attempt(self, run_id: int, outcome: AttemptOutcome, output: str, **extra: Any) -> int:
        phase_id = self.phases[-1]
        number = self.next_number.get(phase_id, 0) + 1
        self.next_number[phase_id] = number
        doctor = extra.pop("doctor", None)
        with transaction(self.url) as session:
            now = utcnow()
            row = Attempt(
                run_id=run_id,
                phase_id=phase_id,
                number=number,
                worker="w@host",
                lease_epoch=1,
                started_at=now,
                finished_at=now,
                outcome=outcome,
                failure_reason=None if outcome == AttemptOutcome.SUCCESS else "validation failed (exit 1)",
                validation_output=output,
                changed_paths=[],
                doctor={"diagnosis": "d", "action": doctor[0], "advice": f"fix {doctor[0]}"}
                if doctor
                else None,
                **extra,
            )
            session.add(row)
            session.flush()
            if doctor:
                record_usage(
                    session,
                    call_key=f"doctor-{row.id}",
                    run_id=run_id,
                    phase_id=phase_id,
                    attempt_number=number,
                    provider="anthropic",
                    model="claude-sonnet-4-6",
                    role="doctor",
                    input_tokens=doctor[1] - 100,
                    output_tokens=100,
                    cache_read_tokens=None,
                    cache_write_tokens=None,
                    latency_ms=10,
                    request_id=None,
                    cost_usd=Decimal("0.001"),
                )
            return row.id


def seed_history(url: str, repo: Path) -> History:
    """Three new shapes spread over runs (see PLAN), among noise: one-off errors, failures the built-in
    hardening explained, infra errors, and successes (one whose builder output mentions a frob error)."""
    seeder = Seeder(url, repo)
    history = History()
    runs = [seeder.run() for _ in range(5)]
    history.run_ids = runs
    counter = 0
    for shape, (occurrences, n_runs) in PLAN.items():
        ids = history.by_shape.setdefault(shape, [])
        for k in range(occurrences):
            run_id = runs[k % n_runs]
            seeder.phases.append(_phase_of(url, run_id))
            out = pytest_failure(SHAPES[shape](counter))
            ids.append(seeder.attempt(run_id, AttemptOutcome.VALIDATION_FAILED, out, doctor=DOCTOR[shape]))
            counter += 1
    for i, line in enumerate(NOISE):
        seeder.phases.append(_phase_of(url, runs[i % 5]))
        seeder.attempt(runs[i % 5], AttemptOutcome.VALIDATION_FAILED, pytest_failure(line))
    explained = {"pattern": "missing_python_dependency", "advice": "a", "evidence": "e"}
    for i in range(3):  # explained by hardening: never mined, though their shape repeats
        out = pytest_failure(f"ModuleNotFoundError: No module named 'yaml{i}'")
        seeder.attempt(runs[0], AttemptOutcome.VALIDATION_FAILED, out, mitigation=explained)
    for i in range(3):  # the fleet's fault, not the model's: never mined
        seeder.attempt(runs[1], AttemptOutcome.INFRA_ERROR, pytest_failure(f"OSError: disk full on dev{i}"))
    for _ in range(4):
        seeder.attempt(runs[2], AttemptOutcome.SUCCESS, "3 passed in 0.1s\n")
    seeder.attempt(runs[3], AttemptOutcome.SUCCESS, "1 passed", builder_output=f"# raises {frob(99)}")
    return history


def _phase_of(url: str, run_id: int) -> int:
    with transaction(url) as session:
        return session.scalars(select(Phase.id).where(Phase.run_id == run_id, Phase.index == 0)).one()
