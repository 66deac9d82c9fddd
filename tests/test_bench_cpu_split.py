"""The history bench's CPU split: each git verb's children are billed to that verb, the rest of the
children to "other processes", and the wrappers are gone once the phase ends."""

from __future__ import annotations

import subprocess
import sys
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


def test_the_reaper_waits_for_an_adopted_bwrap_orphan_and_leaves_other_children(tmp_path: Path) -> None:
    """In a process of its own (a subreaper adopts every orphan below it): a `bwrap` orphaned by its
    shell is reaped, with its CPU then in RUSAGE_CHILDREN; a `sleep` child of its own is left alone."""
    fake = tmp_path / "bwrap"
    fake.write_bytes(Path("/bin/sh").read_bytes())
    fake.chmod(0o755)
    loop = tmp_path / "loop.sh"
    loop.write_text("i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done\n")
    script = (
        "import os, resource, subprocess, sys, time\n"
        "from tests.bench.reaping import _children, adopt_orphans, reap_orphans\n"
        "adopt_orphans()\n"
        "mine = subprocess.Popen(['sleep', '5'])\n"
        f"subprocess.run(['sh', '-c', '{fake} {loop} &'])\n"
        "def named(pid):\n"
        "    try:\n"
        "        return open(f'/proc/{pid}/comm').read().strip()\n"
        "    except OSError:\n"
        "        return ''\n"
        "deadline = time.monotonic() + 20\n"  # the orphan may not have exec'd yet when its shell exits
        "while 'bwrap' not in [named(pid) for pid in _children()] and time.monotonic() < deadline:\n"
        "    time.sleep(0.01)\n"
        "before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime\n"
        "reaped = reap_orphans()\n"
        "gained = resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime - before\n"
        "print(reaped, gained > 0, mine.poll() is None)\n"
        "mine.kill()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parents[1],
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "True", "True"]
