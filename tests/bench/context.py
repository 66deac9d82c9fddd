"""(k) Builder context: whole files (the old selection) against outline + excerpts, at 8k, 20k and 60k
estimated tokens, on this repository's own recent small commits and on more-itertools' releases.

Each *case* is an upstream change: the tree before it, a goal, a scope and its target lines (the lines of
the old files it changed or inserted after). For each case, budget and mode the bench measures the
prompt's size, the time to build the context (median of 3), and recall (per case in the JSON): the share
of target lines the prompt shows (a whole file shows all of its lines, a partial one its excerpts).

Cases: this repository's latest commits on `main` that change at most `MAX_TARGET_LINES` existing lines
under workers/ or shared/ (goal = the commit message); and more-itertools sdists fetched from the package
registry with `pip download --no-binary :all:` (no git history there), where each bullet of the newer
version's changelog naming existing functions is a goal and its targets are the changed lines inside
those functions' definitions and their tests (`test_<name>`, `<Name>Tests`); and each release whole
(goal = those bullets together, targets = every changed line of the package and its tests), which no
budget here can cover. Never fails on timing.
"""

from __future__ import annotations

import difflib
import itertools
import re
import statistics
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.specs import PhaseSpec
from tests.bench.stats import Row
from workers.context import ContextSelection, rank, select_context
from workers.context.budget import BUDGET_REASON
from workers.context.load import Listed, load_candidates
from workers.context.outline import outline
from workers.context.stats import STATS
from workers.llm.prompts import builder_prompt

SECTION = "(k) context"
BUDGETS = (8_000, 20_000, 60_000)
OLD_CAP_BYTES = 200 * 1024
"""The whole-file selection dropped files over this silently."""
MAX_TARGET_LINES = 120
MIT_VERSIONS = ("10.5.0", "10.6.0", "10.7.0", "10.8.0")
_FUNC = re.compile(r":func:`(\w+)`")

Targets = dict[str, set[int]]


@dataclass(frozen=True)
class Case:
    source: str
    name: str
    root: Path
    phase: PhaseSpec
    targets: Targets


# ----------------------------------------------------------------------------------------- selections


def whole_files(root: Path, phase: PhaseSpec, budget: int) -> ContextSelection:
    """The selection before outlines: files ranked, kept whole while they fit; over 200 KB, dropped."""
    candidates, listed = load_candidates(root, phase)
    kept, misfits, total = [], [], 0
    for c in rank(candidates, f"{phase.goal}\n{phase.name}"):
        fits = len(c.text.encode()) <= OLD_CAP_BYTES and total + c.tokens <= budget
        (kept if fits else misfits).append(c)
        total += c.tokens if fits else 0
    return ContextSelection(
        files=[(c.path, c.text) for c in kept],
        kept=len(kept),
        omitted=len(misfits),
        estimated_tokens_kept=total,
        estimated_tokens_omitted=sum(c.tokens for c in misfits),
        omitted_paths=[c.path for c in misfits],
        budget_tokens=budget,
        listed=[Listed(c.path, len(c.text.encode()), BUDGET_REASON) for c in misfits] + listed,
    )


def shown_lines(selection: ContextSelection) -> Targets:
    shown: Targets = {path: set(range(1, text.count("\n") + 2)) for path, text in selection.files}
    for p in selection.partial:
        shown[p.path] = {n for s, e in p.excerpts() for n in range(s, e + 1)}
    return shown


def recall(selection: ContextSelection, targets: Targets) -> tuple[int, int]:
    shown = shown_lines(selection)
    hit = sum(len(lines & shown.get(path, set())) for path, lines in targets.items())
    return hit, sum(len(lines) for lines in targets.values())


# -------------------------------------------------------------------------------------------- targets


def changed_lines(old: str, new: str) -> set[int]:
    """Old-side lines an edit replaced or deleted, and the line an insertion follows (1-based)."""
    a, b = old.splitlines(), new.splitlines()
    lines: set[int] = set()
    for tag, i1, i2, _, _ in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag in ("replace", "delete"):
            lines |= set(range(i1 + 1, i2 + 1))
        elif tag == "insert":
            lines.add(max(1, i1))
    return lines


def tree_targets(old: Path, new: Path, dirs: tuple[str, ...]) -> Targets:
    targets: Targets = {}
    for top in dirs:
        for path in sorted((old / top).rglob("*.py")):
            rel = path.relative_to(old).as_posix()
            if (new / rel).is_file():
                lines = changed_lines(
                    path.read_text(errors="replace"), (new / rel).read_text(errors="replace")
                )
                if lines:
                    targets[rel] = lines
    return targets


# ------------------------------------------------------------------------------- this repository's cases


def own_cases(repo: Path, workdir: Path, count: int = 6) -> list[Case]:
    log = _git(repo, "log", "--format=%H", "-n", "60", "main", "--", "workers", "shared").split()
    cases: list[Case] = []
    for sha in log:
        if len(cases) == count:
            break
        old, new = (
            _export(repo, f"{sha}^", workdir / f"{sha[:8]}-old"),
            _export(repo, sha, workdir / f"{sha[:8]}"),
        )
        targets = tree_targets(old, new, ("workers", "shared"))
        size = sum(len(v) for v in targets.values())
        if not targets or size > MAX_TARGET_LINES:
            continue
        message = _git(repo, "log", "-1", "--format=%B", sha).strip()
        phase = PhaseSpec(name=f"c{sha[:8]}", goal=message[:20000], scope=["workers/", "shared/"])
        cases.append(Case("autopack", sha[:8], old, phase, targets))
    return cases


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def _export(repo: Path, ref: str, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(repo), "archive", ref], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


# ------------------------------------------------------------------------------------ more-itertools


def fetch_more_itertools(workdir: Path) -> dict[str, Path] | None:
    """The sdists, unpacked; None if the registry cannot be reached (the section then says so)."""
    trees: dict[str, Path] = {}
    for version in MIT_VERSIONS:
        spec = f"more-itertools=={version}"
        argv = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:"]
        done = subprocess.run([*argv, "-d", str(workdir), spec], capture_output=True, check=False)
        found = sorted(workdir.glob(f"more[-_]itertools-{version}.tar.gz"))
        if done.returncode != 0 or not found:
            return None
        with tarfile.open(found[0]) as archive:
            archive.extractall(workdir, filter="data")
        trees[version] = next(p for p in workdir.iterdir() if p.is_dir() and p.name.endswith(version))
    return trees


def mit_cases(trees: dict[str, Path]) -> list[Case]:
    cases: list[Case] = []
    for old_v, new_v in itertools.pairwise(MIT_VERSIONS):
        old, new = trees[old_v], trees[new_v]
        changes = tree_targets(old, new, ("more_itertools", "tests"))
        bullets = _bullets(new / "docs/versions.rst", new_v)
        whole = PhaseSpec(name=f"v{new_v}", goal="\n".join(bullets), scope=["more_itertools/", "tests/"])
        cases.append(Case("more-itertools release", f"{old_v}->{new_v}", old, whole, changes))
        for i, bullet in enumerate(bullets):
            targets = _attributed(old, changes, set(_FUNC.findall(bullet)))
            if targets:
                phase = PhaseSpec(name=f"v{new_v}-{i}", goal=bullet, scope=["more_itertools/", "tests/"])
                cases.append(Case("more-itertools", f"{old_v}->{new_v} #{i}", old, phase, targets))
    return cases


def _bullets(changelog: Path, version: str) -> list[str]:
    text = changelog.read_text()
    section = text.split(f"\n{version}\n", 1)[1].split("\n-----", 1)[1]
    section = re.split(r"\n\d+\.\d+\.\d+\n", section, maxsplit=1)[0]
    return [b.strip() for b in re.findall(r"\n\s+\* (.+)", section) if _FUNC.search(b)]


def _attributed(old: Path, changes: Targets, names: set[str]) -> Targets:
    """The changed lines inside definitions of `names` (functions, their `test_` functions, `<Name>Tests`)."""
    keys = {n.replace("_", "").lower() for n in names}
    targets: Targets = {}
    for rel, lines in changes.items():
        symbols = outline(rel, (old / rel).read_text(errors="replace")) or []
        for s in symbols:
            key = s.name.lower().removeprefix("test").removesuffix("tests").replace("_", "")
            if key in keys:
                inside = {n for n in lines if s.start <= n <= s.end}
                if inside:
                    targets.setdefault(rel, set()).update(inside)
    return targets


# ------------------------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class Measure:
    source: str
    case: str
    mode: str
    budget: int
    prompt_chars: int
    build_ms: float
    """The first build, with an empty per-blob statistics cache."""
    warm_ms: float
    """Later builds of the same phase (a retry, the next phase over mostly the same blobs)."""
    hit: int
    targets: int


def measure(case: Case, mode: str, budget: int) -> Measure:
    pick = select_context if mode == "outline+excerpts" else whole_files
    samples: list[float] = []
    STATS.clear()  # the first build is cold; the next two read the per-blob statistics cache
    for _ in range(3):
        started = time.perf_counter()
        selection = pick(case.root, case.phase, budget)
        samples.append(time.perf_counter() - started)
    prompt = builder_prompt(case.phase, selection, attempt=1, previous_failure=None, advice=None)[1][0][
        "content"
    ]
    hit, total = recall(selection, case.targets)
    cold_ms, warm_ms = samples[0] * 1000, statistics.median(samples[1:]) * 1000
    return Measure(case.source, case.name, mode, budget, len(prompt), cold_ms, warm_ms, hit, total)


@dataclass(frozen=True)
class ContextResult:
    cases: list[dict[str, Any]]
    measures: list[Measure]
    notes: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {"cases": self.cases, "measures": [m.__dict__ for m in self.measures], "notes": self.notes}

    def rows(self) -> list[Row]:
        rows: list[Row] = []
        for source in dict.fromkeys(m.source for m in self.measures):
            for budget in BUDGETS:
                for mode in ("whole files", "outline+excerpts"):
                    got = [m for m in self.measures if (m.source, m.mode, m.budget) == (source, mode, budget)]
                    hit, total = sum(m.hit for m in got), sum(m.targets for m in got)
                    chars = statistics.median(m.prompt_chars for m in got)
                    build = statistics.median(m.build_ms for m in got)
                    warm = statistics.median(m.warm_ms for m in got)
                    rows.append(
                        Row(
                            SECTION,
                            f"{source} {budget // 1000}k {mode}: recall {hit}/{total}",
                            f"{build:.1f} ms cold, {warm:.1f} warm",
                            n=str(len(got)),
                            versus=f"prompt {chars / 1000:.0f}k chars",
                            ratio=f"{100 * hit / total:.0f} %" if total else "n/a",
                        )
                    )
        return rows


def bench(workdir: Path, repo: Path) -> ContextResult:
    workdir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    cases = own_cases(repo, workdir / "own")
    trees = fetch_more_itertools(workdir / "mit")
    if trees is None:
        notes.append("(k) more-itertools: the package registry could not be reached; its cases are missing")
    else:
        cases += mit_cases(trees)
    measures = [
        measure(case, mode, budget)
        for case in cases
        for budget in BUDGETS
        for mode in ("whole files", "outline+excerpts")
    ]
    summary = [
        {
            "source": c.source,
            "case": c.name,
            "targets": sum(len(v) for v in c.targets.values()),
            "files": len(c.targets),
        }
        for c in cases
    ]
    return ContextResult(summary, measures, notes)
