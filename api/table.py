"""Plain-text tables of runs for the CLI and the demo."""

from __future__ import annotations

from datetime import datetime
from typing import Any


def _seconds(run: dict[str, Any]) -> str:
    if not run.get("started_at") or not run.get("finished_at"):
        return "-"
    start = datetime.fromisoformat(run["started_at"])
    end = datetime.fromisoformat(run["finished_at"])
    return f"{(end - start).total_seconds():.1f}s"


def render_runs(runs: list[dict[str, Any]]) -> str:
    rows = [("run", "name", "state", "phases", "duration", "result branch", "head")]
    for r in runs:
        phases = " ".join(f"{p['name']}:{p['state']}" for p in r["phases"])
        rows.append(
            (
                str(r["id"]),
                r["name"] or "",
                r["state"],
                phases,
                _seconds(r),
                r["result_branch"],
                r["head_sha"][:10],
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
