"""(c) Workspace provisioning on a repository of 2,100 files: the pool against worktree add and clone."""

from __future__ import annotations

import shutil
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.git import git
from tests.bench.stats import Row, Summary, ratio, settled, times
from workers.workspace import WorkspaceManager

SECTION = "(c) provisioning"
TARGET_RATIO = 0.25
COMMIT_DISTANCE = 20
POOLED_PER_ROUND = 3
IDENTITY = ["-c", "user.name=Bench", "-c", "user.email=bench@localhost"]


def module_text(n: int, revision: int) -> str:
    return (
        f'"""Module {n}, revision {revision}."""\n\n\ndef f_{n}(x: int) -> int:\n    return x + {revision}\n'
    )


def module_paths(files: int) -> list[str]:
    """`files` paths spread over nested packages: pkg_NN/sub_N/mod_NNNN.py."""
    return [f"pkg_{i // 100:02d}/sub_{i // 10 % 10}/mod_{i:04d}.py" for i in range(files)]


def write(root: Path, rel: str, text: str) -> None:
    target = root / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)


def repo_git(path: Path, *args: str) -> str:
    return git(*args, cwd=path)


def make_big_repo(path: Path, files: int = 2100, commits: int = 32, touched: int = 25) -> list[str]:
    """A repo of `files` small modules and `commits` commits, each changing `touched` of them.

    Returns the commit SHAs, oldest first.
    """
    paths = module_paths(files)
    for n, rel in enumerate(paths):
        write(path, rel, module_text(n, 0))
    repo_git(path, "init", "--quiet", "--initial-branch=main")
    for revision in range(commits):
        for k in range(touched if revision else 0):
            n = (revision * touched + k) * 7 % files
            write(path, paths[n], module_text(n, revision))
        repo_git(path, "add", "--all")
        repo_git(path, *IDENTITY, "commit", "--quiet", "-m", f"revision {revision}")
    return repo_git(path, "rev-list", "--reverse", "main").split()


def dirty(worktree: Path) -> None:
    """Leave what a phase leaves: a modified tracked file and an untracked one."""
    (worktree / "pkg_00/sub_0/mod_0000.py").write_text("changed = True\n")
    (worktree / "leftover.txt").write_text("left behind by a phase\n")


@dataclass
class Methods:
    """The three ways to get a checkout at a commit, each timed one use at a time."""

    repo: Path
    root: Path
    pair: tuple[str, str]
    pool: WorkspaceManager = field(init=False)
    mirror: Path = field(init=False)

    def __post_init__(self) -> None:
        self.pool = WorkspaceManager(self.root / "pool", slots=2)
        self.mirror = self.root / "mirror.git"

    def pooled_use(self, sha: str) -> None:
        with self.pool.worktree(str(self.repo), sha) as wt:
            dirty(wt.path)

    def first_pooled(self) -> float:
        """The pool's first use: clone the mirror, `git worktree add` the slot."""
        return settled(self.pooled_use, self.pair[0])

    def pooled(self, i: int) -> float:
        return settled(self.pooled_use, self.pair[(i + 1) % 2])

    def add_remove(self, i: int) -> tuple[float, float]:
        """`git worktree add --detach` then `git worktree remove --force` on a bare mirror."""
        if not self.mirror.exists():
            git("clone", "--quiet", "--bare", "--", str(self.repo), str(self.mirror))
        dest = str(self.root / f"wt-{i}")
        add = settled(
            git, "worktree", "add", "--quiet", "--detach", dest, self.pair[i % 2], git_dir=self.mirror
        )
        return add, settled(git, "worktree", "remove", "--force", dest, git_dir=self.mirror)

    def clone(self, i: int) -> float:
        dest = self.root / f"clone-{i}"
        seconds = settled(git, "clone", "--quiet", "--no-local", "--", str(self.repo), str(dest))
        shutil.rmtree(dest)
        return seconds


@dataclass
class Timings:
    first_use: float = 0.0
    pooled: list[float] = field(default_factory=list)
    adds: list[float] = field(default_factory=list)
    removes: list[float] = field(default_factory=list)
    clones: list[float] = field(default_factory=list)


def interleaved(methods: Methods, rounds: int, pooled_per_round: int, clone_every: int) -> Timings:
    """Rounds of every method in turn, so drift in the machine's load hits them all alike."""
    out = Timings(first_use=methods.first_pooled())
    for i in range(rounds):
        out.pooled += [methods.pooled(i * pooled_per_round + k) for k in range(pooled_per_round)]
        add, remove = methods.add_remove(i)
        out.adds.append(add)
        out.removes.append(remove)
        if i % clone_every == 0:
            out.clones.append(methods.clone(i))
    return out


@dataclass(frozen=True)
class ProvisioningResult:
    files: int
    commits: int
    first_use_seconds: float
    pooled: Summary
    add: Summary
    add_remove: Summary
    clone: Summary
    paired_ratio: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "commits": self.commits,
            "commit_distance": COMMIT_DISTANCE,
            "pooled_first_use_ms": self.first_use_seconds * 1000,
            "pooled_reuse": self.pooled.as_dict(),
            "worktree_add": self.add.as_dict(),
            "worktree_add_plus_remove": self.add_remove.as_dict(),
            "clone_no_local": self.clone.as_dict(),
            "ratio_pooled_over_worktree_add": ratio(self.pooled.median_ms, self.add.median_ms),
            "ratio_pooled_over_worktree_add_paired_by_round": self.paired_ratio,
            "ratio_pooled_over_worktree_add_remove": ratio(self.pooled.median_ms, self.add_remove.median_ms),
            "ratio_pooled_over_clone": ratio(self.pooled.median_ms, self.clone.median_ms),
            "target_ratio_pooled_over_worktree_add": TARGET_RATIO,
        }

    def rows(self) -> list[Row]:
        pooled_ms = self.pooled.median_ms
        over_add = ratio(pooled_ms, self.add.median_ms)
        verdict = f"{times(over_add)} ({'met' if over_add <= TARGET_RATIO else 'MISSED'})"
        first = Summary.of([self.first_use_seconds])
        label = f"{self.files} files"
        return [
            Row.timing(SECTION, f"pooled, first use (mirror clone + worktree add), {label}", first),
            Row.timing(SECTION, f"pooled reuse, {COMMIT_DISTANCE} commits apart", self.pooled),
            Row.timing(
                SECTION,
                "git worktree add --detach",
                self.add,
                f"target pooled/add <= {TARGET_RATIO}",
                verdict,
            ),
            Row(
                SECTION,
                "  pooled / add, paired within each round",
                "",
                versus="median of per-round ratios",
                ratio=times(self.paired_ratio),
            ),
            Row.timing(
                SECTION,
                "git worktree add + remove --force",
                self.add_remove,
                "pooled / (add+remove)",
                times(ratio(pooled_ms, self.add_remove.median_ms)),
            ),
            Row.timing(
                SECTION,
                "git clone --no-local",
                self.clone,
                "pooled / clone",
                times(ratio(pooled_ms, self.clone.median_ms)),
            ),
        ]


def paired_ratio(t: Timings, pooled_per_round: int) -> float:
    """Median over rounds of (that round's median pooled use / that round's worktree add): drift-proof."""
    rounds = [t.pooled[i : i + pooled_per_round] for i in range(0, len(t.pooled), pooled_per_round)]
    return statistics.median(
        ratio(statistics.median(pooled), add) for pooled, add in zip(rounds, t.adds, strict=True)
    )


def bench(workdir: Path, files: int = 2100, commits: int = 32, rounds: int = 10) -> ProvisioningResult:
    """`rounds` rounds of 3 pooled uses and 1 worktree add+remove, with a clone every 4th round."""
    repo = workdir / "big-repo"
    shas = make_big_repo(repo, files, commits)
    t = interleaved(
        Methods(repo, workdir, (shas[-1 - COMMIT_DISTANCE], shas[-1])), rounds, POOLED_PER_ROUND, 4
    )
    both = [a + r for a, r in zip(t.adds, t.removes, strict=True)]
    return ProvisioningResult(
        files,
        len(shas),
        t.first_use,
        Summary.of(t.pooled),
        Summary.of(t.adds),
        Summary.of(both),
        Summary.of(t.clones),
        paired_ratio(t, POOLED_PER_ROUND),
    )
