"""(j) Validation reuse and slot affinity: what a real phase costs when its baseline is remembered.

Validation: a generated repository whose own pytest suite (a few hundred tests, a few seconds boxed) is
every phase's validation; a run of several scripted phases (each adds a module and its tests), on the
embedded fleet in the bwrap sandbox, timed per phase from the record (`phases.started_at/finished_at`):
with `validation_cache` off (every baseline re-runs the suite), on (phase 0 runs its baseline; every
later phase's baseline is its predecessor's after-validation), and a replay of the same run over the
same base commit (every baseline is remembered).

Slot affinity: on a repository of (c)'s shape (2,100 files by default), a pooled worktree provisioned
at a commit 20 commits away from the slot's (one slot, alternating commits) against one provisioned at
the slot's own commit (two slots: each commit goes back to the slot already there).
"""

from __future__ import annotations

import os
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from api.client import ApiClient
from api.serve import api_in_thread
from shared.db import transaction, upgrade
from shared.git import git
from shared.models import Phase, Run
from shared.settings import Settings
from tests.bench.provisioning import COMMIT_DISTANCE, dirty, module_paths, module_text, write
from tests.bench.stats import Row, Summary, ms, ratio, times
from tests.support.scenario import wait_terminal
from workers.embedded import embedded_fleet
from workers.workspace import WorkspaceManager

SECTION = "(j) validation reuse"
IDENTITY = ["-c", "user.name=Bench", "-c", "user.email=bench@localhost"]
CHECK = f"PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 {sys.executable} -m pytest -q -x tests"


def test_module(n: int, tests: int) -> str:
    body = [f"import time\n\nfrom pkg.mod_{n:03d} import f\n"]
    for t in range(tests):
        # A little CPU and 5 ms of waiting per test (the I/O of a real suite): the waiting keeps the
        # suite's length, and so the saving, readable on a machine other work keeps busy.
        body.append(
            f"\n\ndef test_{t:03d}() -> None:\n    time.sleep(0.005)\n"
            f"    assert f({t}) == sum(range(20_000)) + {t}\n"
        )
    return "".join(body)


def source_module(n: int) -> str:
    return f"def f(x: int) -> int:\n    return sum(range(20_000)) + x\n\n\nNAME = 'mod_{n:03d}'\n"


def make_suite_repo(path: Path, modules: int, tests_per_module: int) -> Path:
    """`modules` source modules under pkg/, each with a test file of `tests_per_module` tests."""
    (path / "pkg").mkdir(parents=True)
    (path / "tests").mkdir()
    (path / "pkg" / "__init__.py").write_text("")
    (path / "pyproject.toml").write_text('[tool.pytest.ini_options]\npythonpath = ["."]\n')
    for n in range(modules):
        (path / "pkg" / f"mod_{n:03d}.py").write_text(source_module(n))
        (path / "tests" / f"test_mod_{n:03d}.py").write_text(test_module(n, tests_per_module))
    commit_all(path, "suite", init=True)
    return path


def commit_all(path: Path, message: str, *, init: bool = False) -> str:
    if init:
        git("init", "--quiet", "--initial-branch=main", cwd=path)
    git("add", "--all", cwd=path)
    git(*IDENTITY, "commit", "--quiet", "-m", message, cwd=path)
    return git("rev-parse", "HEAD", cwd=path).strip()


def make_big_repo(path: Path, files: int, commits: int, touched: int = 25) -> list[str]:
    """As (c)'s repository: `files` small modules, `commits` commits each changing `touched` of them."""
    paths = module_paths(files)
    for n, rel in enumerate(paths):
        write(path, rel, module_text(n, 0))
    shas = [commit_all(path, "revision 0", init=True)]
    for revision in range(1, commits):
        for k in range(touched):
            n = (revision * touched + k) * 7 % files
            write(path, paths[n], module_text(n, revision))
        shas.append(commit_all(path, f"revision {revision}"))
    return shas


def run_spec(repo: Path, phases: int, first_module: int, tests_per_module: int) -> dict[str, Any]:
    def phase(i: int) -> dict[str, Any]:
        n = first_module + i
        command = (
            f"printf %s {shlex.quote(source_module(n))} > pkg/mod_{n:03d}.py && "
            f"printf %s {shlex.quote(test_module(n, tests_per_module))} > tests/test_mod_{n:03d}.py"
        )
        return {"name": f"add-{n}", "scope": ["pkg/", "tests/"], "command": command, "validation": [CHECK]}

    return {
        "repo": str(repo),
        "config": {"builder": "script", "max_attempts": 1},
        "phases": [phase(i) for i in range(phases)],
    }


def phase_seconds(url: str, run_id: int) -> list[float]:
    with transaction(url) as session:
        rows = session.execute(
            select(Phase.started_at, Phase.finished_at).where(Phase.run_id == run_id).order_by(Phase.index)
        ).all()
    return [(end - start).total_seconds() for start, end in rows if start and end]


def run_states(url: str, run_ids: list[int]) -> list[str]:
    with transaction(url) as session:
        return [
            str(s) for s in session.scalars(select(Run.state).where(Run.id.in_(run_ids)).order_by(Run.id))
        ]


@dataclass(frozen=True)
class Variant:
    name: str
    phases: list[list[float]]
    """Per run, per phase seconds."""
    states: list[str]

    def later(self, run: int) -> Summary:
        return Summary.of(self.phases[run][1:])

    def first(self, run: int) -> float:
        return self.phases[run][0]

    def total(self, run: int) -> float:
        return sum(self.phases[run])


def run_variant(workdir: Path, repo: Path, spec: dict[str, Any], cache: bool, runs: int) -> Variant:
    """`runs` runs of `spec`, one after the other (the second one a replay over the same base commit)."""
    db = workdir / f"{'on' if cache else 'off'}.db"
    url = f"sqlite:///{db}"
    upgrade(url)
    settings = Settings(
        database_url=url,
        broker_url="memory://",
        workspace_dir=workdir / f"ws-{'on' if cache else 'off'}",
        worker_concurrency=1,
        log_level="WARNING",
        validation_cache=cache,
        _env_file=None,
    )
    ids: list[int] = []
    with embedded_fleet(settings, 1) as celery, api_in_thread(settings, celery) as api:
        client = ApiClient(api, None)
        for _ in range(runs):
            run_id = client.submit(spec)["id"]
            wait_terminal(client, [run_id], timeout=1800)
            ids.append(run_id)
    return Variant("on" if cache else "off", [phase_seconds(url, i) for i in ids], run_states(url, ids))


def suite_seconds(repo: Path) -> float:
    """The suite once, unboxed, for the table's context."""
    start = time.perf_counter()
    subprocess.run(CHECK, shell=True, cwd=repo, capture_output=True, check=False)
    return time.perf_counter() - start


# --- slot affinity ---------------------------------------------------------------------------------


def provision_seconds(pool: WorkspaceManager, repo: Path, sha: str) -> float:
    os.sync()  # writeback left by the previous use is not billed to this one (as (c) does)
    start = time.perf_counter()
    with pool.worktree(str(repo), sha) as wt:
        seconds = time.perf_counter() - start
        dirty(wt.path)  # what a phase leaves, so the next reset has that much to undo too
    return seconds


def affinity(workdir: Path, files: int, rounds: int) -> tuple[Summary, Summary]:
    """(reset across COMMIT_DISTANCE commits, reset at the slot's own commit), interleaved by round."""
    repo = workdir / "big"
    shas = make_big_repo(repo, files=files, commits=COMMIT_DISTANCE + 2)
    pair = (shas[1], shas[1 + COMMIT_DISTANCE])
    across = WorkspaceManager(workdir / "one-slot", slots=1)
    affine = WorkspaceManager(workdir / "two-slots", slots=2)
    # First uses (mirror clone, worktree add) are not what is measured. The two-slot pool gets one slot
    # per commit by holding both at once, as two interleaved runs on one host would.
    for sha in pair:
        provision_seconds(across, repo, sha)
    with affine.worktree(str(repo), pair[0]), affine.worktree(str(repo), pair[1]):
        pass
    far: list[float] = []
    near: list[float] = []
    for i in range(rounds):
        for sha in (pair[i % 2], pair[(i + 1) % 2]):
            far.append(provision_seconds(across, repo, sha))
            near.append(provision_seconds(affine, repo, sha))
    return Summary.of(far), Summary.of(near)


# --- the section -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ValidationReuseResult:
    tests: int
    phases: int
    suite_seconds: float
    off: Variant
    on: Variant
    far: Summary
    near: Summary
    files: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "tests_in_suite": self.tests,
            "phases_per_run": self.phases,
            "suite_seconds_unboxed": self.suite_seconds,
            "cache_off": {"phase_seconds": self.off.phases, "states": self.off.states},
            "cache_on": {"phase_seconds": self.on.phases, "states": self.on.states},
            "cache_on_later_phase_median_over_off": ratio(
                self.on.later(0).median_ms, self.off.later(0).median_ms
            ),
            "slot_affinity": {
                "files": self.files,
                "commit_distance": COMMIT_DISTANCE,
                "reset_across": self.far.as_dict(),
                "reset_in_place": self.near.as_dict(),
            },
        }

    def rows(self) -> list[Row]:
        off, on = self.off, self.on
        label = f"{self.tests} tests"
        out = [
            Row(SECTION, f"suite once, unboxed ({label})", ms(self.suite_seconds * 1000)),
            Row.timing(SECTION, "phase 2.., cache off (baseline re-runs the suite)", off.later(0)),
            Row.timing(
                SECTION,
                "phase 2.., cache on (baseline = previous phase's after)",
                on.later(0),
                "on / off",
                times(ratio(on.later(0).median_ms, off.later(0).median_ms)),
            ),
            Row(
                SECTION,
                "phase 1, cache off / on (both run the baseline)",
                ms(off.first(0) * 1000),
                versus=ms(on.first(0) * 1000),
            ),
            Row(
                SECTION,
                f"whole run ({self.phases} phases), cache off",
                ms(off.total(0) * 1000),
            ),
            Row(
                SECTION,
                f"whole run ({self.phases} phases), cache on",
                ms(on.total(0) * 1000),
                versus="on / off",
                ratio=times(ratio(on.total(0), off.total(0))),
            ),
        ]
        if len(on.phases) > 1:
            replay = Summary.of(on.phases[1])
            out.append(
                Row.timing(
                    SECTION,
                    "replay over the same base, cache on: every phase",
                    replay,
                    "vs off, every phase",
                    times(ratio(replay.median_ms, statistics.median(off.phases[1]) * 1000)),
                )
            )
        out += [
            Row.timing(SECTION, f"slot reset across {COMMIT_DISTANCE} commits, {self.files} files", self.far),
            Row.timing(
                SECTION,
                "slot already at the commit (affinity)",
                self.near,
                "affine / across",
                times(ratio(self.near.median_ms, self.far.median_ms)),
            ),
        ]
        return out


def bench(
    workdir: Path,
    *,
    modules: int = 40,
    tests_per_module: int = 10,
    phases: int = 6,
    files: int = 2100,
    rounds: int = 15,
) -> ValidationReuseResult:
    workdir.mkdir(parents=True, exist_ok=True)
    # An origin per variant: each variant's database numbers its runs from 1, and result branches are
    # named by run id.
    variants = []
    for cache in (False, True):
        repo = make_suite_repo(workdir / f"suite-{cache}", modules, tests_per_module)
        spec = run_spec(repo, phases, modules, tests_per_module)
        variants.append(run_variant(workdir, repo, spec, cache=cache, runs=2))
    off, on = variants
    seconds = suite_seconds(repo)
    far, near = affinity(workdir, files, rounds)
    return ValidationReuseResult(modules * tests_per_module, phases, seconds, off, on, far, near, files)
