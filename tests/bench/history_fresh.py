"""(l) The retained level measured again in a process of its own, as a fleet's pool child meets it.

A prefork worker runs phases in pool children while retention runs in the main process's reconciler,
so the fleet's figure is a new process's; the embedded mode (one process) is the bench's own. The two
are printed side by side so a cost that lives in the process (caches, heap) rather than in the
repository or the database shows as a gap between them. (They agree: the gap once suspected was a
mirror whose retention had stalled, workers/retention.py `prune_mirror`.)

Run as `python -m tests.bench.history_fresh DB_URL WORKDIR REPO HISTORY PHASES`: it measures one
level on the bench's workspace and database and prints the level's figures as one line of JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

FIELDS = ("wall", "cpu", "origin_cpu", "reconcile", "fetch_cpu", "git_ms", "cpu_by", "failures")
TIMEOUT_SECONDS = 1800


def measure_in_child(db_url: str, workdir: Path, repo: Path, history: int, phases: int) -> dict[str, Any]:
    """The figures of one level measured by a new Python process (fields as `history.Level`'s)."""
    argv = [sys.executable, "-m", __name__, db_url, str(workdir), str(repo), str(history), str(phases)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_SECONDS, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the fresh-process level failed ({done.returncode}): {done.stderr[-2000:]}")
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def main(argv: list[str]) -> None:
    from tests.bench import history
    from tests.bench.origin_cpu import OriginMeter
    from tests.bench.reaping import adopt_orphans
    from workers.executor import WorkerContext

    db_url, workdir, repo = argv[0], Path(argv[1]), Path(argv[2])
    level_history, phases = int(argv[3]), int(argv[4])
    settings = history.bench_settings(db_url, workdir / "workspace")
    ctx = WorkerContext.build(settings, history.NullDispatcher())
    adopt_orphans()
    with OriginMeter(workdir).installed() as meter:
        level = history.measure_level(ctx, repo, level_history, phases, workdir, meter, tag="-fresh")
    print(json.dumps({name: getattr(level, name) for name in FIELDS}))


if __name__ == "__main__":
    main(sys.argv[1:])
