"""Plain-text tables of runs (CLI and demo) and of API keys (CLI)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from shared.models import ApiKey


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
    return _table(rows)


def render_keys(keys: Sequence[ApiKey]) -> str:
    """Keys as `autopack keys list` prints them: the stored prefix only, never a hash or a key."""
    rows = [("id", "name", "owner", "admin", "prefix", "created", "revoked")]
    for k in keys:
        revoked = k.revoked_at.isoformat(timespec="seconds") if k.revoked_at else "-"
        created = k.created_at.isoformat(timespec="seconds")
        rows.append((str(k.id), k.name, k.owner, "yes" if k.admin else "no", k.prefix, created, revoked))
    return _table(rows)


def _table(rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
