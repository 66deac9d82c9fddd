"""Where a phase's CPU goes, by process: this Python process, each git verb, and the sandbox.

The bench executes phases one at a time in its own process (section (l)), so the CPU the children
reaped during one `git()` or one boxed command is theirs alone: `getrusage(RUSAGE_CHILDREN)` is read
around `shared.git._run` and `workers.commands.run_boxed`, and the box's namespace init (an orphan
this process adopts, tests/bench/reaping.py) is reaped before the second reading, so the box's figure
holds bwrap, setpriv, unshare, bash and the command. What no wrapper saw is "other processes"; the
Python figure is `RUSAGE_SELF` (libgit2, psycopg and SQLAlchemy work included).
"""

from __future__ import annotations

import resource
import statistics
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import shared.git
import workers.commands
from tests.bench.reaping import reap_orphans

BOX = "box"
PYTHON = "python"
OTHER = "other processes"


def verb(argv: list[str]) -> str:
    """`git -c a=b --git-dir X push …` -> "push"; `git-receive-pack '/path'` -> "receive-pack"."""
    if argv and Path(argv[0]).name.startswith("git-"):
        return Path(argv[0]).name.removeprefix("git-")
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg in ("-c", "--git-dir", "-C"):
            i += 2
        elif arg.startswith("-"):
            i += 1
        else:
            return arg
    return "?"


def _rusage(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


class CpuSplit:
    """CPU seconds by process over the phases run inside `phase()`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.phases = 0
        self._self = self._children = 0.0

    @contextmanager
    def phase(self) -> Iterator[None]:
        """Count the CPU of the one phase executed inside."""
        real_run, real_box = shared.git._run, workers.commands.run_boxed
        shared.git._run = self._counted(real_run, lambda args: verb(list(args[0])))  # type: ignore[assignment]
        workers.commands.run_boxed = self._counted(real_box, lambda args: BOX, reap=True)  # type: ignore[assignment]
        reap_orphans()
        start_self, start_children = _rusage(resource.RUSAGE_SELF), _rusage(resource.RUSAGE_CHILDREN)
        try:
            yield
        finally:
            self.phases += 1
            shared.git._run, workers.commands.run_boxed = real_run, real_box  # type: ignore[assignment]
            reap_orphans()
            self._self += _rusage(resource.RUSAGE_SELF) - start_self
            self._children += _rusage(resource.RUSAGE_CHILDREN) - start_children

    def _counted(
        self, real: Callable[..., Any], name: Callable[[tuple[Any, ...]], str], reap: bool = False
    ) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            before = _rusage(resource.RUSAGE_CHILDREN)
            try:
                return real(*args, **kwargs)
            finally:
                if reap:
                    reap_orphans()
                self.seconds[name(args)] += _rusage(resource.RUSAGE_CHILDREN) - before

        return counted

    def ms_per_phase(self) -> dict[str, float]:
        """Milliseconds per phase by process, largest first: Python, then each child group."""
        if not self.phases:
            return {}
        seen = sum(self.seconds.values())
        out = {PYTHON: self._self, **self.seconds, OTHER: max(self._children - seen, 0.0)}
        per = {k: v * 1000 / self.phases for k, v in out.items()}
        return dict(sorted(per.items(), key=lambda kv: -kv[1]))


def cpu_seconds() -> float:
    """This process's CPU and its children's, boxes included (tests/bench/reaping.py)."""
    reap_orphans()
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def spawn_cpu_ms(samples: int = 50) -> float:
    """Median CPU of spawning and reaping `true`, as `cpu_seconds` counts a phase's processes."""
    cpu = []
    for _ in range(samples):
        before = cpu_seconds()
        subprocess.run(["true"], check=True)
        cpu.append((cpu_seconds() - before) * 1000)
    return statistics.median(cpu)


LOOP = 1_000_000


def python_cpu_ms(samples: int = 5) -> float:
    """Median CPU of `LOOP` iterations of a plain Python loop: the machine's speed at the bytecode this
    process runs between its processes and round trips (the no-op phase's "python" share)."""
    cpu = []
    for _ in range(samples):
        before, total = time.process_time(), 0
        for i in range(LOOP):
            total += i
        cpu.append((time.process_time() - before) * 1000)
    return statistics.median(cpu)
