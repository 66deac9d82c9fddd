"""The closing table and bench-results/latest.json."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import astuple
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.bench.stats import Row

HEADERS = ("section", "metric", "median / value", "p95", "n", "versus", "ratio")


def render(rows: Sequence[Row]) -> str:
    """A markdown table, columns padded so it also reads well in a terminal."""
    cells = [HEADERS, *(astuple(r) for r in rows)]
    widths = [max(len(str(line[i])) for line in cells) for i in range(len(HEADERS))]

    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(str(v).ljust(w) for v, w in zip(values, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(HEADERS), rule, *(line(c) for c in cells[1:])])


def git_head(root: Path) -> str | None:
    done = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or None


def environment(root: Path, load_at_start: float) -> dict[str, Any]:
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": git_head(root),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average_at_start": load_at_start,
        "load_average_at_end": os.getloadavg()[0],
    }


def write_json(path: Path, results: dict[str, Any], root: Path, load_at_start: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"environment": environment(root, load_at_start), **results}
    path.write_text(json.dumps(body, indent=2, sort_keys=False, default=str) + "\n")
