"""`autopack patterns …`: mined failure clusters, candidate rules measured on history, accepted rules."""

from __future__ import annotations

import json
from typing import Any

import click

from api.cli_support import fail, settings_client
from api.client import ClientError


def _call(method: str, path: str, **kw: Any) -> Any:
    try:
        return settings_client()._call(method, path, **kw)
    except ClientError as exc:
        fail(exc)


@click.group(invoke_without_command=True)
@click.option("--window", type=int, default=2000, help="Newest failed attempts mined.")
@click.option("--limit", type=int, default=20, help="Clusters shown.")
@click.option("--min-occurrences", type=int, default=2)
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")
@click.pass_context
def patterns(ctx: click.Context, window: int, limit: int, min_occurrences: int, as_json: bool) -> None:
    """Failures no rule explained, clustered and ranked by occurrences x distinct runs (admin key)."""
    if ctx.invoked_subcommand is not None:
        return
    params = {"window": window, "limit": limit, "min_occurrences": min_occurrences}
    report = _call("GET", "/failures/patterns", params=params)
    click.echo(json.dumps(report, indent=2) if as_json else render_report(report))


def render_report(report: dict[str, Any]) -> str:
    lines = [f"{report['scanned']} unexplained failed attempts mined, {len(report['clusters'])} clusters"]
    for c in report["clusters"]:
        lines.append(
            f"#{c['rank']} score {c['score']} ({c['occurrences']} attempts, {c['distinct_runs']} runs) "
            f"doctor: {c['doctor_action'] or '-'}, {c['doctor_calls']} calls, {c['doctor_tokens']} tokens"
        )
        lines.append(f"   template:  {c['template']}")
        if c["doctor_diagnosis"]:
            lines.append(f"   diagnosis: {c['doctor_diagnosis'][:200]}")
        lines.append(f"   candidate: {c['candidate']['pattern']}")
        lines.extend(
            f"   e.g. attempt {e['attempt_id']} (run {e['run_id']}): {e['line']}" for e in c["examples"]
        )
    return "\n".join(lines)


@patterns.command("measure")
@click.argument("pattern")
@click.option("--window", type=int, default=2000)
def measure(pattern: str, window: int) -> None:
    """Measure PATTERN (RE2) on history: hits, false hits on successes, Doctor tokens saved."""
    click.echo(
        json.dumps(_call("POST", "/failures/rules/measure", json={"pattern": pattern, "window": window}))
    )


@patterns.command("accept")
@click.option("--name", required=True)
@click.option("--pattern", required=True, help="RE2 regex searched line by line.")
@click.option("--advice", required=True, help="What the next attempt is told.")
def accept(name: str, pattern: str, advice: str) -> None:
    """Accept a rule: running workers apply it to their next failure."""
    rule = _call("POST", "/failures/rules", json={"name": name, "pattern": pattern, "advice": advice})
    click.echo(f"rule {rule['id']} ({rule['name']}) accepted as rule-set version {rule['version']}")


@patterns.command("rules")
@click.option("--all", "include_retired", is_flag=True, help="Retired rules too.")
def rules(include_retired: bool) -> None:
    """The accepted rules with their hits."""
    out = _call("GET", "/failures/rules", params={"include_retired": include_retired})
    click.echo(f"rule-set version {out['version']}")
    for r in out["rules"]:
        state = "retired" if r["retired_at"] else "active"
        click.echo(f"  {r['id']:>4} {r['name']:<32} {state:<8} hits {r['hits']:<6} {r['pattern']}")


@patterns.command("retire")
@click.argument("rule_id", type=int)
def retire(rule_id: int) -> None:
    """Retire a rule (a new rule-set version)."""
    rule = _call("POST", f"/failures/rules/{rule_id}/retire")
    click.echo(f"rule {rule['id']} ({rule['name']}) retired")
