"""The history bench's CPU split: each git verb's children are billed to that verb, the rest of the
children to "other processes", and the wrappers are gone once the phase ends."""

from __future__ import annotations

import subprocess
from pathlib import Path

import shared.git
import workers.commands
from shared.git import git
from tests.bench.cpu_split import OTHER, PYTHON, CpuSplit, verb


def test_children_cpu_is_billed_to_the_git_verb_that_spawned_them(sample_repo: Path) -> None:
    split = CpuSplit()
    real_run, real_box = shared.git._run, workers.commands.run_boxed
    with split.phase():
        for _ in range(5):
            git("rev-parse", "HEAD", cwd=sample_repo)
        git("status", "--porcelain", cwd=sample_repo)
        subprocess.run(["git", "--version"], capture_output=True, check=True)  # not through `git()`
    per_phase = split.ms_per_phase()
    assert split.phases == 1
    assert per_phase["rev-parse"] > 0 and per_phase["status"] > 0
    assert per_phase[OTHER] > 0  # the bare subprocess
    assert per_phase[PYTHON] > 0
    assert (shared.git._run, workers.commands.run_boxed) == (real_run, real_box)


def test_verb_skips_options_and_their_values() -> None:
    assert verb(["git", "-c", "a=b", "--git-dir", "/x", "update-ref", "--stdin"]) == "update-ref"
    assert verb(["/usr/lib/git-core/git-receive-pack", "/repo"]) == "receive-pack"
    assert verb(["git", "--version"]) == "?"
