"""`make bench`: every benchmark, each against a baseline measured in the same run.

(a) raw Celery no-op round trip and throughput; (b) per-phase orchestration overhead through a real
API and worker; (c) workspace provisioning on a 2,100-file repository; (d) pipeline overhead of one
builder attempt on that repository (LLM simulated, validation excluded); (e) scaling of independent
`sleep 1` phases over 1, 2, 4 and 8 worker slots, no-op phase throughput against (a), and the
reconciler's database passes the 4-worker fleet made meanwhile; (f) the
sandbox's cost per command (bwrap `true` against unboxed `true`); (g) the campaign A/B report over
10,000 pairs with 10,000 bootstrap resamples; (h) creating a 500-child campaign (against single
`POST /runs`), and an interactive run's wait while 500 campaign phases are queued; (i) the dashboard's
pages and JSON routes over 100,000 generated runs (~40 s, ~1.5 GB), with EXPLAIN of their queries;
(j) phase time of a multi-phase run validated by a 400-test suite, validation store off and on (and a
replay), and slot affinity; (k) builder context: whole files against outline + excerpts at 8k/20k/60k
tokens, cold and warm, recall of upstream changes' lines, on this repository and on more-itertools;
(l) per-phase CPU and wall after 0, 1,000, 5,000 and 10,000 earlier runs (generated; with
`--history-legacy` the code before the fix too); (m) transactions and round trips of one no-op phase
and the idle worker's USS/PSS; (n) `POST /runs` latency and its sustained rate with 8 clients.

Prints figures and ratios, then issue 12's target table from this run's figures
(tests/bench/targets.py), writes bench-results/latest.json (latest-only-<sections>.json when --only
picks some), and never fails on timing: only a crash exits non-zero.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
import sqlalchemy as sa

from shared.db import engine_for, upgrade
from shared.settings import Settings
from tests.bench import (
    campaign_report,
    campaigns,
    celery_roundtrip,
    context,
    dashboard,
    dashboard_data,
    history,
    orchestration,
    phase_db,
    pipeline,
    provisioning,
    sandbox,
    scaling,
    submit,
    targets,
    validation_reuse,
)
from tests.bench.noop_app import REDIS_URL
from tests.bench.procs import ROOT
from tests.bench.report import render, write_json
from tests.bench.stats import Row
from tests.conftest import PG_ADMIN, create_database, drop_database

DATABASE = "autopack_bench"
RESULTS = ROOT / "bench-results"
SECTIONS = (
    "celery",
    "orchestration",
    "provisioning",
    "pipeline",
    "scaling",
    "sandbox",
    "report",
    "campaigns",
    "validation",
    "context",
    "phase_db",
    "submit",
    "dashboard",
    "history",
)
OPT_IN: tuple[str, ...] = ()
"""Sections run only when named with --only (none now: the target table needs every section)."""
ALL_SECTIONS = SECTIONS + OPT_IN
NEEDS_REDIS = frozenset({"celery", "orchestration", "scaling", "campaigns", "phase_db", "submit"})
NEEDS_CELERY = frozenset({"orchestration", "scaling"})  # (a) is their baseline


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.run", description=__doc__)
    parser.add_argument("--calls", type=int, default=300, help="(a) round trips timed")
    parser.add_argument("--tasks", type=int, default=1000, help="(a) tasks in the throughput burst")
    parser.add_argument("--runs", type=int, default=50, help="(b) runs submitted")
    parser.add_argument("--phases", type=int, default=4, help="(b) no-op phases per run")
    parser.add_argument("--in-flight", type=int, default=2, help="(b) most runs unfinished at once")
    parser.add_argument("--no-push-runs", type=int, default=20, help="(b) runs with push_results=False")
    parser.add_argument("--files", type=int, default=2100, help="(c), (d) files in the generated repository")
    parser.add_argument("--iterations", type=int, default=40, help="(d) attempts timed (within ~40 s)")
    parser.add_argument(
        "--scaling-phases",
        type=int,
        default=64,
        help="(e) `sleep 1` phases per slot configuration (the issue's full version: 500)",
    )
    parser.add_argument(
        "--scaling-target-phases",
        type=int,
        default=scaling.TARGET_PHASES,
        help="(e) `sleep 1` phases at 8 slots, the issue's target batch (default: %(default)s)",
    )
    parser.add_argument("--scaling-noop-phases", type=int, default=200, help="(e) no-op phases at 8 slots")
    parser.add_argument(
        "--scaling-configs",
        type=scaling.parse_configs,
        default=scaling.CONFIGS,
        help="(e) worker shapes, processes x concurrency, comma-separated; the last also runs the no-op "
        f"batch (default: {scaling.format_configs(scaling.CONFIGS)})",
    )
    parser.add_argument("--validation-phases", type=int, default=6, help="(j) phases per timed run")
    parser.add_argument("--sandbox-commands", type=int, default=100, help="(f) commands timed per variant")
    parser.add_argument("--report-pairs", type=int, default=10_000, help="(g) pairs in the timed report")
    parser.add_argument("--campaign-children", type=int, default=500, help="(h) children of the campaign")
    parser.add_argument("--submit-runs", type=int, default=200, help="(n) sequential submissions timed")
    parser.add_argument("--dashboard-runs", type=int, default=100_000, help="(i) runs generated")
    parser.add_argument("--dashboard-attempts", type=int, default=500_000, help="(i) attempts generated")
    parser.add_argument(
        "--dashboard-usage", type=int, default=1_000_000, help="(i) LLM usage events generated"
    )
    parser.add_argument("--dashboard-seed", type=int, default=1, help="(i) seed of the generated history")
    parser.add_argument("--dashboard-requests", type=int, default=50, help="(i) timed requests per route")
    parser.add_argument(
        "--dashboard-keep",
        action="store_true",
        help=f"(i) keep the database {DATABASE}_dashboard, and reuse it if already generated",
    )
    parser.add_argument(
        "--history-levels",
        default=",".join(map(str, history.LEVELS)),
        help="(l) earlier runs before each measurement, comma-separated",
    )
    parser.add_argument("--history-phases", type=int, default=20, help="(l) phases timed per level")
    parser.add_argument(
        "--history-keep",
        type=int,
        default=Settings.model_fields["result_branch_retention_runs"].default,
        help="(l) then measure again after retention kept only this many newest runs' refs "
        "(default: the setting's; 0: skip)",
    )
    parser.add_argument(
        "--history-legacy",
        action="store_true",
        help="(l) measure the code before the fix too (every ref fetched, no commit-graph)",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=ALL_SECTIONS,
        help="run only this section (repeatable; orchestration and scaling also run celery, their baseline)",
    )
    return parser.parse_args(argv)


def selected(args: argparse.Namespace) -> set[str]:
    chosen = set(args.only or SECTIONS)
    return chosen | {"celery"} if chosen & NEEDS_CELERY else chosen


def results_path(args: argparse.Namespace) -> Path:
    chosen = selected(args)
    if chosen == set(SECTIONS):
        return RESULTS / "latest.json"
    return RESULTS / f"latest-only-{'-'.join(s for s in ALL_SECTIONS if s in chosen)}.json"


def say(text: str) -> None:
    print(text, flush=True)


def flush_redis() -> None:
    redis.Redis.from_url(REDIS_URL).flushdb()


@contextmanager
def bench_database(name: str = DATABASE) -> Iterator[str]:
    """A migrated Postgres database of the bench's own, dropped afterwards."""
    url = create_database(name)
    try:
        upgrade(url)
        yield url
    finally:
        engine_for(url).dispose()
        drop_database(name)


def run_all(args: argparse.Namespace, workdir: Path, logdir: Path) -> tuple[dict[str, Any], list[Row]]:
    chosen = selected(args)
    results: dict[str, Any] = {}
    rows: list[Row] = []
    if "celery" in chosen:
        a = run_celery(args, logdir)
        results["celery"] = a.as_dict()
        rows += a.rows()
        if "orchestration" in chosen:
            b, b_local = run_orchestration(args, workdir, logdir)
            results |= {"orchestration": b.as_dict(), "orchestration_no_push": b_local.as_dict()}
            rows += [*b.rows(a.round_trip.median_ms), *b_local.variant_rows(b)]
        if "scaling" in chosen:
            e = run_scaling(args, workdir, logdir, a.throughput)
            results["scaling"] = e.as_dict()
            rows += e.rows()
            scaling_notes.extend(e.notes())
    if "provisioning" in chosen:
        c = run_provisioning(args, workdir)
        results["provisioning"] = c.as_dict()
        rows += c.rows()
    if "pipeline" in chosen:
        d = run_pipeline(args, workdir)
        results["pipeline"] = d.as_dict()
        rows += d.rows()
    if "sandbox" in chosen:
        f = run_sandbox(args, workdir)
        results["sandbox"] = f.as_dict()
        rows += f.rows()
    if "report" in chosen:
        say(f"(g) campaign report: {args.report_pairs:,} pairs x 10,000 bootstrap resamples …")
        g = campaign_report.run(pairs=args.report_pairs)
        results["report"] = [asdict(r) for r in g]
        rows += g
    if "campaigns" in chosen:
        h = run_campaigns(args, workdir, logdir)
        results["campaigns"] = h.as_dict()
        rows += h.rows()
    if "validation" in chosen:
        j = run_validation_reuse(args, workdir)
        results["validation"] = j.as_dict()
        rows += j.rows()
    if "phase_db" in chosen:
        m = run_phase_db(workdir, logdir)
        results["phase_db"] = m.as_dict()
        rows += m.rows()
    if "submit" in chosen:
        n = run_submit(args, workdir, logdir)
        results["submit"] = [r.as_dict() for r in n]
        rows += [row for r in n for row in r.rows()]
    if "dashboard" in chosen:
        i = run_dashboard(args, workdir, logdir)
        results["dashboard"] = i.as_dict()
        rows += i.rows()
        dashboard_notes.extend(i.notes)
    if "context" in chosen:
        say(
            "(k) builder context: whole files vs outline + excerpts at 8k/20k/60k, recall of upstream lines …"
        )
        k = context.bench(workdir / "k", ROOT)
        results["context"] = k.as_dict()
        rows += k.rows()
    if "history" in chosen:
        for j in run_history(args, workdir):
            results["history_legacy" if j.legacy else "history"] = j.as_dict()
            rows += j.rows()
    return results, rows


def run_history(args: argparse.Namespace, workdir: Path) -> list[history.HistoryResult]:
    levels = tuple(int(n) for n in args.history_levels.split(","))
    out = []
    for legacy in (True, False) if args.history_legacy else (False,):
        label = " as before the fix" if legacy else ""
        say(f"(l) history{label}: per-phase CPU and wall after {', '.join(f'{n:,}' for n in levels)} runs …")
        with bench_database(f"{DATABASE}_history") as db_url:
            out.append(
                history.bench(
                    db_url,
                    workdir / ("l-legacy" if legacy else "l"),
                    legacy=legacy,
                    levels=levels,
                    phases=args.history_phases,
                    keep_runs=args.history_keep,
                    say=say,
                )
            )
    return out


def run_dashboard(args: argparse.Namespace, workdir: Path, logdir: Path) -> dashboard.DashboardResult:
    name = f"{DATABASE}_dashboard"
    if args.dashboard_keep and (db_url := existing_database(name)) is not None:
        say(f"(i) dashboard: reusing the history in {name} …")
        upgrade(db_url)  # a history kept from an older checkout gets this one's migrations (indexes)
        return dashboard_on(args, db_url, dashboard_data.describe(db_url), workdir, logdir)
    say(f"(i) dashboard: generating {args.dashboard_runs:,} runs, {args.dashboard_usage:,} usage events …")
    url = create_database(name)
    try:
        upgrade(url)
        data = dashboard_data.generate(
            url,
            runs=args.dashboard_runs,
            attempts=args.dashboard_attempts,
            usage=args.dashboard_usage,
            seed=args.dashboard_seed,
            # The history ends at this hour, so the overview's "today" holds today's share of it.
            end=datetime.now(UTC).replace(minute=0, second=0, microsecond=0),
            say=say,
        )
        return dashboard_on(args, url, data, workdir, logdir)
    finally:
        engine_for(url).dispose()
        if not args.dashboard_keep:
            drop_database(name)


def dashboard_on(
    args: argparse.Namespace, db_url: str, data: dashboard_data.GeneratedData, workdir: Path, logdir: Path
) -> dashboard.DashboardResult:
    result = dashboard.bench(
        db_url,
        dashboard.REDIS_URL,
        workdir / "i",
        logdir / "i",
        data,
        requests=args.dashboard_requests,
        say=say,
    )
    explained = dashboard.explain_routes(
        db_url, dashboard.REDIS_URL, dashboard.json_routes(data), dashboard.ui_pages(data), workdir / "i"
    )
    dashboard.write_explain(RESULTS / "dashboard-explain.md", explained)
    result.notes += dashboard.slowest(explained)
    result.notes.append(
        f"(i) EXPLAIN (ANALYZE, BUFFERS) of the JSON routes' queries: {RESULTS / 'dashboard-explain.md'}"
    )
    return result


def existing_database(name: str) -> str | None:
    """The URL of database `name` when it exists and holds runs; None otherwise."""
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    try:
        with sa.create_engine(url, poolclass=sa.pool.NullPool).connect() as conn:
            return url if conn.execute(sa.text("SELECT count(*) FROM runs")).scalar_one() > 0 else None
    except sa.exc.SQLAlchemyError:
        return None


def run_phase_db(workdir: Path, logdir: Path) -> phase_db.PhaseDbResult:
    say("(m) database work of one no-op phase (in-process), idle worker USS/PSS …")
    flush_redis()
    with bench_database(f"{DATABASE}_phase_db") as db_url:
        return phase_db.bench(db_url, REDIS_URL, workdir / "m", logdir / "m", say=say)


def run_submit(args: argparse.Namespace, workdir: Path, logdir: Path) -> list[submit.SubmitResult]:
    say(f"(n) POST /runs with 3 phases: {args.submit_runs} one at a time, then {submit.CLIENTS} clients …")
    flush_redis()
    with bench_database(f"{DATABASE}_submit") as db_url:
        return submit.bench(db_url, REDIS_URL, workdir / "n", logdir / "n", runs=args.submit_runs, say=say)


def run_campaigns(args: argparse.Namespace, workdir: Path, logdir: Path) -> campaigns.CampaignBench:
    say(f"(h) campaigns: create {args.campaign_children} children; fair share with them queued …")
    flush_redis()
    with bench_database(f"{DATABASE}_campaigns") as db_url:
        return campaigns.bench(
            db_url, REDIS_URL, workdir / "h", logdir / "h", children=args.campaign_children, say=say
        )


def run_sandbox(args: argparse.Namespace, workdir: Path) -> sandbox.SandboxResult:
    say(f"(f) sandbox cost: {args.sandbox_commands} x `true`, bwrap against unboxed, interleaved …")
    f = sandbox.bench(workdir / "f", iterations=args.sandbox_commands)
    say(
        f"    added per command {f.added_ms:.1f} ms (target {sandbox.TARGET_MS:.0f}); bwrap true "
        f"{f.bwrap_true.median_ms:.1f} ms vs plain true {f.plain_true.median_ms:.1f} ms"
    )
    return f


def run_validation_reuse(args: argparse.Namespace, workdir: Path) -> validation_reuse.ValidationReuseResult:
    say(f"(j) validation reuse: {args.validation_phases}-phase runs, 400 tests as validation, store off/on …")
    j = validation_reuse.bench(workdir / "j", phases=args.validation_phases, files=args.files)
    on, off = j.on.later(0).median_ms, j.off.later(0).median_ms
    say(f"    phase 2.. median {off:.0f} ms with the store off, {on:.0f} ms on")
    return j


def run_celery(args: argparse.Namespace, logdir: Path) -> celery_roundtrip.CeleryResult:
    say("(a) raw Celery no-op round trip and throughput …")
    flush_redis()
    a = celery_roundtrip.bench(logdir, calls=args.calls, tasks=args.tasks)
    say(f"    round trip median {a.round_trip.median_ms:.1f} ms, {a.throughput:.0f} tasks/s")
    return a


def run_orchestration(
    args: argparse.Namespace, workdir: Path, logdir: Path
) -> tuple[orchestration.OrchestrationResult, orchestration.OrchestrationResult]:
    say(f"(b) {args.runs} runs x {args.phases} no-op phases through autopack api + worker …")
    b, b_local = orchestration_pair(args, workdir / "b", logdir / "b")
    say(f"    overhead per phase median {b.overhead.median_ms:.1f} ms (target {orchestration.TARGET_MS:.0f})")
    say(f"    without pushing results: {b_local.overhead.median_ms:.1f} ms")
    return b, b_local


def run_provisioning(args: argparse.Namespace, workdir: Path) -> provisioning.ProvisioningResult:
    say(f"(c) workspace provisioning on a {args.files}-file repository …")
    c = provisioning.bench(workdir / "c", files=args.files)
    say(f"    pooled {c.pooled.median_ms:.1f} ms, worktree add {c.add.median_ms:.1f} ms")
    return c


def run_pipeline(args: argparse.Namespace, workdir: Path) -> pipeline.PipelineResult:
    say(f"(d) pipeline overhead per builder attempt on a {args.files}-file repository …")
    d = pipeline.bench(workdir / "d", files=args.files, iterations=args.iterations)
    say(f"    total median {d.total.median_ms:.1f} ms (target {pipeline.TARGET_MS:.0f}), n={d.iterations}")
    return d


def run_scaling(
    args: argparse.Namespace, workdir: Path, logdir: Path, celery_tasks_per_second: float
) -> scaling.ScalingResult:
    say(
        f"(e) scaling: {args.scaling_phases} x `sleep 1` single-phase runs on "
        f"{scaling.format_configs(args.scaling_configs)} slots ({args.scaling_target_phases} at 8 slots), "
        f"then {args.scaling_noop_phases} no-op phases on the last …"
    )
    flush_redis()
    with bench_database(f"{DATABASE}_scaling") as db_url:
        return scaling.bench(
            db_url,
            REDIS_URL,
            workdir / "e",
            logdir / "e",
            celery_tasks_per_second=celery_tasks_per_second,
            phases=args.scaling_phases,
            target_phases=args.scaling_target_phases,
            noop_phases=args.scaling_noop_phases,
            configs=args.scaling_configs,
            say=say,
        )


def orchestration_pair(
    args: argparse.Namespace, workdir: Path, logdir: Path
) -> tuple[orchestration.OrchestrationResult, orchestration.OrchestrationResult]:
    """(b) as configured by default (results pushed), then with push_results=False: fresh processes,
    a fresh database and a flushed Redis each."""
    pushed = orchestration_once(args, workdir / "push", logdir / "push", push=True)
    local = orchestration_once(args, workdir / "local", logdir / "local", push=False)
    return pushed, local


def orchestration_once(
    args: argparse.Namespace, workdir: Path, logdir: Path, push: bool
) -> orchestration.OrchestrationResult:
    flush_redis()
    with bench_database() as db_url:
        return orchestration.bench(
            db_url,
            REDIS_URL,
            workdir,
            logdir,
            runs=args.runs if push else args.no_push_runs,
            phases=args.phases,
            in_flight=args.in_flight,
            push=push,
        )


scaling_notes: list[str] = []  # (e)'s notes, filled by run_all
dashboard_notes: list[str] = []  # (i)'s notes, filled by run_all


def notes(results: dict[str, Any]) -> list[str]:
    pipeline_notes: list[str] = results.get("pipeline", {}).get("notes", [])
    context_notes: list[str] = results.get("context", {}).get("notes", [])
    return orchestration_notes(results) + pipeline_notes + scaling_notes + dashboard_notes + context_notes


def orchestration_notes(results: dict[str, Any]) -> list[str]:
    if "orchestration" not in results:
        return []
    b = results["orchestration"]
    lines = [
        f"(b) runs submitted one at a time with at most {b['max_in_flight']} in flight (no queue wait); "
        f"{b['warmup_runs']} warm-up runs not counted; {b['runs']} runs in {b['wall_seconds']:.1f} s.",
        "(b) execution = phase started_at->finished_at; gap = previous phase finished_at (or run "
        "created_at) -> started_at; both from GET /runs/{id}, server clock.",
        "(b) reconciler every 1 s, re-dispatch after 5 s (defaults 15 s / 60 s), so a dropped "
        "'busy' delivery stalls its run ~5 s instead of ~75 s.",
    ]
    for key in ("orchestration", "orchestration_no_push"):
        lines += [f"(b) FAILED: {f}" for f in results[key]["failures"]]
    return lines


def busy_machine_note(load_at_start: float) -> list[str]:
    cpus = os.cpu_count() or 1
    if load_at_start < 0.5 * cpus:
        return []
    return [
        f"NOTE: load average was {load_at_start:.2f} on {cpus} CPUs at start: figures may include contention."
    ]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    load_at_start = os.getloadavg()[0]
    logdir = RESULTS / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix="autopack-bench-") as tmp:
            results, rows = run_all(args, Path(tmp), logdir)
    finally:
        if selected(args) & NEEDS_REDIS:
            flush_redis()
    output = results_path(args)
    write_json(output, results, ROOT, load_at_start)
    print()
    print(render(rows))
    print()
    print("\n".join(notes(results) + busy_machine_note(load_at_start)))
    print("\nIssue 12's targets, from this run:\n")
    print(targets.table(results))
    print(f"\nJSON: {output}; process logs: {logdir}")


if __name__ == "__main__":
    main()
