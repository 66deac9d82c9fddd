"""How the CLI shows runs and attempts: plain text (pipes, logs, CI) and `rich` renderables (a terminal).

Pure functions of the API's JSON: no HTTP, no printing, so tests render them into a StringIO console.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.rule import Rule
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

TERMINAL = {"DONE_SUCCESS", "DONE_FAILED", "CANCELLED"}
STYLE = {
    "DONE_SUCCESS": "bold green",
    "COMPLETE": "green",
    "RUNNING": "yellow",
    "EXECUTING": "yellow",
    "AWAITING_APPROVAL": "bold yellow",
    "QUEUED": "dim",
    "DONE_FAILED": "bold red",
    "FAILED": "red",
    "SKIPPED": "magenta",
    "CANCELLED": "magenta",
}


def _when(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def elapsed(item: dict[str, Any], now: datetime | None = None) -> float | None:
    """Seconds from `started_at` to `finished_at`, or to now while it still runs; None before it starts."""
    start = _when(item.get("started_at"))
    if start is None:
        return None
    end = _when(item.get("finished_at")) or now or datetime.now(UTC)
    return max(0.0, (end - start).total_seconds())


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{seconds:.1f}s"


def last_reason(phase: dict[str, Any]) -> str | None:
    """The phase's own failure reason, or while it retries the reason its last attempt failed."""
    if phase.get("failure_reason"):
        return str(phase["failure_reason"])
    for attempt in reversed(phase.get("attempt_log") or []):
        if attempt.get("failure_reason"):
            return str(attempt["failure_reason"])
    return None


def one_line(text: str, limit: int = 300) -> str:
    """A reason on one line (its lines joined by ` | `), cut at `limit` characters."""
    joined = " | ".join(part.strip() for part in text.splitlines() if part.strip())
    return joined if len(joined) <= limit else joined[: limit - 1] + "…"


# --- plain text ---------------------------------------------------------------------------------


def run_line(run: dict[str, Any]) -> str:
    return (
        f"run {run['id']} {run['name'] or ''}  {run['state']}  base {run['base_sha'][:12]}"
        f"  head {run['head_sha'][:12]}  branch {run['result_branch']}"
    )


def phase_line(phase: dict[str, Any]) -> str:
    """One phase in plain text. Finished phases show their duration; a running one does not, so the
    line only changes when something happens (`status --watch` prints changed lines)."""
    sha = (phase["commit_sha"] or "")[:12]
    took = duration(elapsed(phase)) if phase.get("finished_at") else ""
    return (
        f"  [{phase['index']}] {phase['name']:<24} {phase['state']:<10} attempts {phase['attempts']}"
        f"  {took:>7}  {sha}"
    ).rstrip()


def describe(run: dict[str, Any]) -> str:
    """A run and its phases, with the last failure reason of each phase that has one."""
    lines = [run_line(run)]
    if run.get("failure_reason"):
        lines.append(f"  reason: {one_line(run['failure_reason'])}")
    for phase in run["phases"]:
        lines.append(phase_line(phase))
        reason = last_reason(phase)
        if reason:
            lines.append(f"      reason: {one_line(reason)}")
    return "\n".join(lines)


def changes(before: dict[str, Any] | None, after: dict[str, Any]) -> list[str]:
    """The plain lines of `after` that differ from `before`: all of them the first time."""
    if before is None:
        return describe(after).splitlines()
    out = []
    if run_line(before) != run_line(after):
        out.append(run_line(after))
    for old, new in zip(before["phases"], after["phases"], strict=True):
        if phase_line(old) != phase_line(new) or last_reason(old) != last_reason(new):
            out.append(phase_line(new))
            reason = last_reason(new)
            if reason and reason != last_reason(old):
                out.append(f"      reason: {one_line(reason)}")
    if after["state"] in TERMINAL and before["state"] not in TERMINAL:
        reason = f": {one_line(after['failure_reason'])}" if after.get("failure_reason") else ""
        out.append(f"run {after['id']} ended {after['state']} after {duration(elapsed(after))}{reason}")
    return out


def attempt_header(a: dict[str, Any]) -> str:
    took = duration(elapsed(a))
    model = f"  model {a['model']} (max_tokens {a['max_tokens']})" if a.get("model") else ""
    return (
        f"phase {a['phase_index']} {a['phase_name']} · attempt {a['number']} · {a['outcome']}"
        f" · {took} · worker {a['worker']}{model}"
    )


def tail(text: str, lines: int) -> str:
    """The last `lines` lines (0 = all), saying how many were left out."""
    parts = text.rstrip("\n").splitlines()
    if lines <= 0 or len(parts) <= lines:
        return "\n".join(parts)
    return f"… {len(parts) - lines} earlier lines left out (--lines 0 shows all)\n" + "\n".join(
        parts[-lines:]
    )


def advice(record: dict[str, Any] | None, keys: tuple[str, ...]) -> str | None:
    if not record:
        return None
    found = [f"{k}: {record[k]}" for k in keys if record.get(k)]
    return "\n".join(found) or None


def attempt_sections(a: dict[str, Any], lines: int) -> list[tuple[str, str]]:
    """(title, text) of each non-empty output of one attempt, in the order a reader wants them."""
    sections = [
        ("failure reason", a.get("failure_reason")),
        ("builder output", tail(a["builder_output"], lines) if a.get("builder_output") else None),
        ("diff", a.get("patch")),
        ("validation output", tail(a["validation_output"], lines) if a.get("validation_output") else None),
        ("mitigation", advice(a.get("mitigation"), ("pattern", "advice", "evidence"))),
        ("doctor", advice(a.get("doctor"), ("diagnosis", "action", "advice", "error"))),
    ]
    return [(title, text) for title, text in sections if text]


def attempts_plain(attempts: list[dict[str, Any]], lines: int) -> str:
    out: list[str] = []
    for a in attempts:
        out.append(f"=== {attempt_header(a)}")
        for title, text in attempt_sections(a, lines):
            out += [f"## {title}", text.rstrip("\n")]  # not `---`: a diff has those lines
        out.append("")
    return "\n".join(out)


# --- rich ---------------------------------------------------------------------------------------


def _state(state: str) -> Text:
    return Text(state, style=STYLE.get(state, ""))


def run_display(run: dict[str, Any], now: datetime | None = None) -> RenderableType:
    """The live `status` view: the run's line and a table of its phases."""
    header = Text.assemble(
        (f"run {run['id']} ", "bold"),
        f"{run['name'] or ''}  ",
        _state(run["state"]),
        f"  {duration(elapsed(run, now))}  branch {run['result_branch']}  head {run['head_sha'][:12]}",
    )
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for column, justify in (("#", "right"), ("phase", "left"), ("state", "left"), ("attempts", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    table.add_column("elapsed", justify="right")
    table.add_column("commit")
    table.add_column("last failure", overflow="fold", ratio=1)
    for p in run["phases"]:
        table.add_row(
            str(p["index"]),
            p["name"],
            _state(p["state"]),
            str(p["attempts"]),
            duration(elapsed(p, now)),
            (p["commit_sha"] or "")[:10],
            Text(one_line(last_reason(p) or "", 200), style="red"),
        )
    parts: list[RenderableType] = [header, table]
    if run.get("failure_reason"):
        parts.append(Text(f"reason: {one_line(run['failure_reason'])}", style="red"))
    return Group(*parts)


def runs_table(runs: list[dict[str, Any]]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for column in ("run", "name", "state", "phases", "duration", "campaign", "branch", "head"):
        table.add_column(column, justify="right" if column == "run" else "left")
    for r in runs:
        phases = Text(" ").join(Text("●", style=STYLE.get(p["state"], "")) for p in r["phases"])
        done = sum(p["state"] == "COMPLETE" for p in r["phases"])
        table.add_row(
            str(r["id"]),
            r["name"] or "",
            _state(r["state"]),
            Text.assemble(phases, f" {done}/{len(r['phases'])}"),
            duration(elapsed(r)) if r.get("finished_at") else "-",
            str(r["campaign_id"] or ""),
            r["result_branch"],
            r["head_sha"][:10],
        )
    return table


def attempts_display(attempts: list[dict[str, Any]], lines: int) -> RenderableType:
    parts: list[RenderableType] = []
    for a in attempts:
        style = "green" if a["outcome"] == "SUCCESS" else "red"
        parts.append(Rule(Text(attempt_header(a), style=f"bold {style}"), align="left"))
        for title, text in attempt_sections(a, lines):
            parts.append(Text(title, style="bold cyan"))
            body: RenderableType = (
                Syntax(text, "diff", word_wrap=True, background_color="default")
                if title == "diff"
                else Text(text)
            )
            parts.append(body)
    return Group(*parts)
