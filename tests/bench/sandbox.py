"""(f) Sandbox cost per command: `true` through run_command boxed by bwrap against the same `true`
unboxed (NoSandbox), interleaved in one run; and bwrap alone (`bwrap … true` via subprocess) against
plain `true`, to separate bwrap's own cost from the runner's."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.bench.stats import Row, Summary, ms, timed
from workers.commands import run_command
from workers.sandbox import BoxRequest, Bwrap, NoSandbox, SandboxPolicy
from workers.sandbox.policy import bwrap_argv

SECTION = "(f) sandbox"
TARGET_MS = 15.0


@dataclass(frozen=True)
class SandboxResult:
    boxed: Summary
    unboxed: Summary
    bwrap_true: Summary
    plain_true: Summary
    git_worktree: Summary
    """run_command in a git repository: includes copying its git metadata for the box."""

    @property
    def added_ms(self) -> float:
        return self.boxed.median_ms - self.unboxed.median_ms

    def as_dict(self) -> dict[str, Any]:
        return {
            "boxed": self.boxed.as_dict(),
            "unboxed": self.unboxed.as_dict(),
            "bwrap_true": self.bwrap_true.as_dict(),
            "plain_true": self.plain_true.as_dict(),
            "git_worktree": self.git_worktree.as_dict(),
            "added_ms": self.added_ms,
            "target_ms": TARGET_MS,
        }

    def rows(self) -> list[Row]:
        verdict = "within" if self.added_ms <= TARGET_MS else "OVER"
        return [
            Row.timing(SECTION, "run_command `true`, bwrap", self.boxed, "unboxed", f"+{ms(self.added_ms)}"),
            Row.timing(SECTION, "run_command `true`, unboxed", self.unboxed),
            Row.timing(SECTION, "run_command `true` in a git repo, bwrap", self.git_worktree),
            Row.timing(SECTION, "bwrap … true (subprocess)", self.bwrap_true, "plain true"),
            Row.timing(SECTION, "plain true (subprocess)", self.plain_true),
            Row(
                SECTION,
                f"added per command (target <= {TARGET_MS:.0f} ms)",
                ms(self.added_ms),
                versus=verdict,
            ),
        ]


def bench(workdir: Path, iterations: int = 100) -> SandboxResult:
    workdir.mkdir(parents=True, exist_ok=True)
    plain_dir, repo = workdir / "plain", workdir / "repo"
    plain_dir.mkdir()
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    policy = SandboxPolicy()
    boxed, unboxed = Bwrap(policy), NoSandbox(policy)
    argv = bwrap_argv(policy, BoxRequest("true", plain_dir), as_root=boxed.as_root)
    samples: dict[str, list[float]] = {k: [] for k in ("boxed", "unboxed", "bwrap", "plain", "git")}
    for _ in range(iterations):  # interleaved, so drift in machine load hits both sides alike
        samples["boxed"].append(
            timed(run_command, "true", plain_dir, timeout=30, max_bytes=1000, backend=boxed)
        )
        samples["unboxed"].append(
            timed(run_command, "true", plain_dir, timeout=30, max_bytes=1000, backend=unboxed)
        )
        samples["bwrap"].append(timed(subprocess.run, argv, check=False, capture_output=True))
        samples["plain"].append(timed(subprocess.run, ["true"], check=False))
        samples["git"].append(timed(run_command, "true", repo, timeout=30, max_bytes=1000, backend=boxed))
    return SandboxResult(
        boxed=Summary.of(samples["boxed"]),
        unboxed=Summary.of(samples["unboxed"]),
        bwrap_true=Summary.of(samples["bwrap"]),
        plain_true=Summary.of(samples["plain"]),
        git_worktree=Summary.of(samples["git"]),
    )
