"""A seeded history for the dashboard bench: runs, phases, attempts, LLM usage and judged campaigns.

Everything is made by `INSERT ... SELECT` over `generate_series` inside Postgres: no row crosses the
wire, which is what makes a million usage events take seconds rather than minutes (COPY from Python
must still format and send every row). Randomness is a hash of (row id, salt, seed) — `hashint8extended`
— not `random()`, so the same seed gives the same rows whatever the plan or parallelism.

Ids are assigned explicitly (contiguous from 1) so foreign keys are computed, not looked up; the
sequences are advanced afterwards so the product's own inserts continue after them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
import sqlalchemy as sa

from shared.campaigns.spec import CampaignSpec
from shared.specs import RunSpec

END = datetime(2026, 11, 30, 12, tzinfo=UTC)
"""The newest run's creation time by default: fixed, not now(), so a seed always gives the same rows.
A bench passes `end=` near now instead, so the dashboard's "today" holds a day's share of the history."""
DAYS = 60
OWNERS = ("team-a", "team-b")
REPOS = (
    "https://git.example.com/acme/payments",
    "https://git.example.com/acme/web-shop",
    "https://git.example.com/acme/search",
    "https://git.example.com/platform/infra-tools",
    "https://git.example.com/platform/auth-service",
)
PHASE_NAMES = ("add-endpoint", "cover-with-tests", "update-docs", "refactor-handlers")
PAGE_SIZE = 50
PAGE = 500
CAMPAIGNS = 20
HEAVY_WEIGHT = 12
"""Attempt weight of each phase of the heavy run (an ordinary executed phase weighs 1 to 3)."""

Say = Callable[[str], None]


@dataclass(frozen=True)
class GeneratedData:
    runs: int
    phases: int
    attempts: int
    usage_events: int
    campaigns: int
    campaign_pairs: int
    heavy_run_id: int
    """A recent run (on the first page) with many attempts and usage events."""
    heavy_run_attempts: int
    campaign_id: int
    """A finished campaign with judged pairs (its report is computed on first read)."""
    owners: tuple[str, ...]
    page_cursor: int
    """`GET /runs?cursor=<this>&limit=50` is page 500 of the newest-first listing (admin view)."""
    seconds: float


def generate(
    db_url: str,
    *,
    runs: int = 100_000,
    attempts: int = 500_000,
    usage: int = 1_000_000,
    seed: int = 1,
    end: datetime = END,
    say: Say = print,
) -> GeneratedData:
    """Fill an empty, migrated Postgres database at `db_url` with `runs` runs created over the 60 days
    before `end`; return ids a bench needs."""
    if runs < 100 or attempts < runs or usage < attempts:
        raise ValueError("need runs >= 100, attempts >= runs and usage >= attempts")
    start = time.perf_counter()
    with psycopg.connect(_libpq_url(db_url), autocommit=True) as conn:
        _require_empty(conn)
        conn.execute("SET synchronous_commit = off")  # durability of a bench fixture does not matter
        # No FK triggers while loading (superuser only): every key is computed, and the test checks them;
        # the per-row RI lookups were about half the load time.
        conn.execute("SET session_replication_role = replica")
        _prepare(conn, seed, runs)
        for label, statement in _steps(runs, attempts, usage, end):
            _timed_step(conn, label, statement, say)
        _finish(conn, say)
        data = _describe(conn, time.perf_counter() - start)
    say(f"    generated in {data.seconds:.1f} s")
    return data


def _libpq_url(db_url: str) -> str:
    return sa.make_url(db_url).set(drivername="postgresql").render_as_string(hide_password=False)


def _require_empty(conn: psycopg.Connection[Any]) -> None:
    row = conn.execute("SELECT count(*) FROM runs").fetchone()
    if row is None or row[0] != 0:
        raise RuntimeError("dashboard_data.generate needs an empty, migrated database")


def _timed_step(conn: psycopg.Connection[Any], label: str, statement: str, say: Say) -> None:
    start = time.perf_counter()
    with conn.transaction():
        conn.execute(statement)
    say(f"    {label}: {time.perf_counter() - start:.1f} s")


# --- session-local helpers: the hash, the run templates, the campaign blocks ---------------------------


def _prepare(conn: psycopg.Connection[Any], seed: int, runs: int) -> None:
    # u(k, salt) in [0, 1): a pure function of (k, salt, seed); inlined by the planner (LANGUAGE sql).
    conn.execute(
        "CREATE FUNCTION pg_temp.u(k bigint, salt int) RETURNS float8 "
        "LANGUAGE sql IMMUTABLE PARALLEL SAFE AS "
        f"$$ SELECT (hashint8extended(k, {int(seed)} * 1000 + salt) & 2147483647)::float8 / 2147483648.0 $$"
    )
    conn.execute(
        "CREATE TEMP TABLE tpl (t int PRIMARY KEY, repo text, nphases int, spec jsonb, "
        "spec_hash text, config jsonb)"
    )
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO tpl VALUES (%s, %s, %s, %s, %s, %s)", _templates())
    conn.execute(
        "CREATE TEMP TABLE cblock (c int PRIMARY KEY, child_start int, n int, owner text, mode text, "
        "spec jsonb)"
    )
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO cblock VALUES (%s, %s, %s, %s, %s, %s)", _campaign_blocks(runs))


def _templates() -> list[tuple[Any, ...]]:
    """One run spec per (repo, phase count), shaped as `create_run` stores it (pydantic's dump)."""
    rows: list[tuple[Any, ...]] = []
    for r, repo in enumerate(REPOS):
        for n in range(1, 5):
            spec = RunSpec.model_validate(_spec(repo, n))
            body = spec.model_dump(mode="json")
            config = spec.config.model_dump(mode="json")
            rows.append((r * 4 + n - 1, repo, n, json.dumps(body), spec.spec_hash(), json.dumps(config)))
    return rows


def _spec(repo: str, n: int) -> dict[str, Any]:
    service = repo.rsplit("/", 1)[1]
    phases = [
        {
            "name": PHASE_NAMES[k],
            "goal": f"{PHASE_NAMES[k].replace('-', ' ').capitalize()} for the {service} service",
            "scope": [f"src/{service.replace('-', '_')}/", "tests/"],
            "read_only_context": ["README.md", "docs/architecture.md"],
            "deliverables": [f"tests/test_{PHASE_NAMES[k].replace('-', '_')}.py"],
            "validation": ["python -m pytest -q", "ruff check ."],
        }
        for k in range(n)
    ]
    config = {"builder": "anthropic", "max_attempts": 3, "max_usd": 5.0}
    return {"repo": repo, "base_ref": "main", "name": "template", "config": config, "phases": phases}


def campaign_pairs_per_campaign(runs: int) -> int:
    return max(5, min(500, runs // 400))


def _campaign_blocks(runs: int) -> list[tuple[Any, ...]]:
    """Campaign c's children are `n` consecutive runs; its sources the `n` runs just before them.

    Blocks sit in the first 90 % of the history, so both sides have ended and every pair is judged.
    """
    n = campaign_pairs_per_campaign(runs)
    rows: list[tuple[Any, ...]] = []
    for c in range(1, CAMPAIGNS + 1):
        child_start = (c * int(runs * 0.9)) // (CAMPAIGNS + 1) + n + 1
        mode = ("rerun", "rerun", "replay", "failed_phases")[c % 4]
        spec = CampaignSpec.model_validate(
            {
                "name": f"{mode}-sonnet-vs-haiku-{c}",
                "source": {"run_ids": list(range(child_start - n, child_start))},
                "mode": mode,
                "overrides": {"config": {"models": {"builder": ["claude-sonnet-4-6"]}}},
                "min_valid_pairs": 5,
            }
        )
        owner = OWNERS[c % 3 == 0]
        rows.append((c, child_start, n, owner, mode, json.dumps(spec.model_dump(mode="json"))))
    return rows


# --- the bulk statements ----------------------------------------------------------------------------


def _steps(runs: int, attempts: int, usage: int, end: datetime) -> list[tuple[str, str]]:
    """(label, SQL) in FK order. Integers are formatted in (they are ints: nothing to inject), so the
    statements go to psycopg without parameters and its `%` placeholders never meet format()'s."""
    values = {
        "R": runs,
        "A": attempts,
        "U": usage,
        "HW": HEAVY_WEIGHT,
        "END": f"'{end.astimezone(UTC).isoformat()}'::timestamptz",
        "DAYS": DAYS,
    }

    texts = {"PATCH": PATCH, "PYTEST": PYTEST, "PASSED": PASSED, "FAILED": FAILED}
    literals = {key: "'" + text.replace("'", "''") + "'" for key, text in texts.items()}

    def fill(sql: str) -> str:
        for key, value in (values | literals).items():
            sql = sql.replace(f"@{key}@", str(value))
        return sql

    return [
        ("campaigns", fill(CAMPAIGNS_SQL)),
        (f"{runs:,} runs", fill(RUNS_SQL)),
        ("phase plan", fill(PHASE_PLAN_SQL)),
        ("phases", fill(PHASES_SQL)),
        (f"{attempts:,} attempts", fill(ATTEMPTS_SQL)),
        (f"{usage:,} llm_usage_events", fill(USAGE_SQL)),
        ("phase_metrics, efficiency_metrics", fill(METRICS_SQL)),
        ("campaign_pairs", fill(PAIRS_SQL)),
    ]


CAMPAIGNS_SQL = """
INSERT INTO campaigns (id, name, owner, spec, mode, state, max_parallel_runs, max_tokens, max_usd, seed,
                       skipped, cap_reached, created_at, finished_at, report, report_at)
SELECT c, spec->>'name', owner, spec::json, mode, 'DONE', NULL, NULL, NULL, c, '[]'::json, NULL,
       @END@ - make_interval(secs => (@R@ - child_start)::float8 / @R@ * @DAYS@ * 86400) - interval
               '1 minute',
       @END@ - make_interval(secs => (@R@ - child_start - n)::float8 / @R@ * @DAYS@ * 86400) + interval
               '1 hour',
       NULL, NULL
FROM cblock
"""

# One row per run. `src` is the run whose task this is: a campaign child repeats its source's task
# (same repo, phases and base commit), so its pair can be judged VALID.
RUNS_SQL = """
WITH base AS (
    SELECT g.id, b.c AS campaign_id,
           CASE WHEN b.c IS NOT NULL THEN g.id - b.n ELSE g.id END AS src,
           coalesce(b.owner, CASE WHEN pg_temp.u(g.id, 4) < 0.7 THEN 'team-a' ELSE 'team-b' END) AS owner
    FROM generate_series(1, @R@) AS g(id)
    LEFT JOIN cblock b ON g.id >= b.child_start AND g.id < b.child_start + b.n
), shaped AS (
    SELECT base.*,
           floor(pow(pg_temp.u(src, 2), 1.5) * 5)::int * 4 + floor(pg_temp.u(src, 3) * 4)::int AS t,
           CASE WHEN id > @R@ - greatest(@R@ / 200, 10) THEN
                     CASE WHEN pg_temp.u(id, 5) < 0.5 THEN 'RUNNING' ELSE 'QUEUED' END
                WHEN pg_temp.u(id, 5) < 0.70 THEN 'DONE_SUCCESS'
                WHEN pg_temp.u(id, 5) < 0.96 THEN 'DONE_FAILED'
                ELSE 'CANCELLED' END AS state,
           @END@ - make_interval(secs => (@R@ - id)::float8 / @R@ * @DAYS@ * 86400 + 5 + pg_temp.u(id,
                   8) * 60)
               AS created_at,
           substr(md5(src || 'base') || md5(src || 'b2'), 1, 40) AS base_sha
    FROM base
), run AS (
    SELECT s.*, tpl.repo, tpl.nphases, tpl.spec AS tspec, tpl.spec_hash, tpl.config,
           format('%s-%s-%s', (ARRAY['fix', 'add', 'refactor', 'upgrade', 'cover'])[1 + s.id % 5],
                  split_part(tpl.repo, '/', 5), s.id) AS name,
           CASE WHEN s.state = 'DONE_FAILED' THEN
                CASE WHEN pg_temp.u(s.id, 6) < 0.72 THEN 'MODEL' WHEN pg_temp.u(s.id, 6) < 0.88 THEN 'INFRA'
                     ELSE 'BUDGET' END END AS failure_kind,
           least(floor(pg_temp.u(s.id, 7) * tpl.nphases)::int, tpl.nphases - 1) AS fail_index,
           CASE WHEN s.state = 'QUEUED' THEN 0 ELSE (20000 + pg_temp.u(s.id,
                   10) * 160000)::bigint END AS tokens,
           s.created_at + make_interval(secs => 0.2 + pg_temp.u(s.id, 11) * 5) AS started_at,
           CASE WHEN s.state = 'DONE_SUCCESS' THEN substr(md5(s.id || 'head') || md5(s.id || 'h2'), 1, 40)
                ELSE s.base_sha END AS head_sha
    FROM shaped s JOIN tpl ON tpl.t = s.t
)
INSERT INTO runs (id, name, repo, base_ref, base_sha, head_sha, branch_sha, spec, spec_hash, config, state,
                  failure_reason, failure_kind, cancel_requested, campaign_id, arm, sample, held, owner,
                  parent_run_id, lease_owner, lease_expires_at, lease_epoch, tokens_spent, tokens_reserved,
                  usd_spent, usd_reserved, created_at, started_at, finished_at)
SELECT id, name, repo, 'main', base_sha, head_sha, CASE WHEN state <> 'QUEUED' THEN head_sha END,
       (tspec || jsonb_build_object('name', name))::json, spec_hash, config::json, state,
       CASE failure_kind
            WHEN 'MODEL' THEN format('phase %s (%s) failed after 3 attempts: validation failed',
                                     fail_index, tspec->'phases'->fail_index->>'name')
            WHEN 'INFRA' THEN format('phase %s delivered 3 times without finishing', fail_index)
            WHEN 'BUDGET' THEN 'budget cap reached: max_usd 5.000000 would be exceeded'
       END,
       failure_kind, state = 'CANCELLED', campaign_id, CASE WHEN campaign_id IS NOT NULL THEN 'B' END,
       CASE WHEN campaign_id IS NOT NULL THEN 0 END, false, owner,
       CASE WHEN campaign_id IS NOT NULL THEN src END,
       CASE WHEN state = 'RUNNING' THEN format('worker@fleet-%s:%s', id % 4 + 1, 1000 + id % 97) END,
       CASE WHEN state = 'RUNNING' THEN @END@ + interval '30 seconds' END,
       CASE WHEN state = 'QUEUED' THEN 0 ELSE 1 + id % 3 END,
       tokens, 0, round((tokens * 0.0000062)::numeric, 6), 0,
       created_at,
       CASE WHEN state <> 'QUEUED' THEN started_at END,
       CASE WHEN state IN ('DONE_SUCCESS', 'DONE_FAILED', 'CANCELLED')
            THEN started_at + make_interval(secs => nphases * (30 + pg_temp.u(id, 9) * 400)) END
FROM run
ORDER BY id
"""

# Every phase of every run, with its state (from the run's), its times, and its share of the attempts:
# each executed phase has a weight, and the attempts are cut in proportion so the total is exactly @A@
# (a phase's attempts are the contiguous ids first_attempt .. first_attempt + n_att - 1).
PHASE_PLAN_SQL = """
CREATE TEMP TABLE ph AS
WITH heavy AS (
    SELECT max(r.id) AS id FROM runs r JOIN tpl t ON t.spec_hash = r.spec_hash
    WHERE r.state = 'DONE_SUCCESS' AND r.campaign_id IS NULL AND t.nphases = 4
), p AS (
    SELECT row_number() OVER (ORDER BY r.id, i) AS id, r.id AS run_id, i AS idx, t.spec->'phases'->i AS pspec,
           r.state AS run_state, r.started_at AS rs,
           coalesce(r.finished_at, r.started_at + make_interval(secs => t.nphases * 120)) AS rf,
                   t.nphases AS n,
           least(floor(pg_temp.u(r.id, 7) * t.nphases)::int, t.nphases - 1) AS fi,
           r.id = (SELECT id FROM heavy) AS heavy
    FROM runs r JOIN tpl t ON t.spec_hash = r.spec_hash
    CROSS JOIN LATERAL generate_series(0, t.nphases - 1) AS i
), s AS (
    SELECT p.*,
           CASE WHEN run_state = 'DONE_SUCCESS' THEN 'COMPLETE'
                WHEN run_state = 'QUEUED' THEN 'QUEUED'
                WHEN idx < fi THEN 'COMPLETE'
                WHEN idx > fi THEN CASE run_state WHEN 'RUNNING' THEN 'QUEUED' ELSE 'CANCELLED' END
                ELSE CASE run_state WHEN 'DONE_FAILED' THEN 'FAILED' WHEN 'RUNNING' THEN 'EXECUTING'
                                    ELSE 'CANCELLED' END
           END AS state,
           rs + (rf - rs) * idx / n + interval '50 milliseconds' AS ps,
           (rf - rs) / n * 0.95 AS slot
    FROM p
), w AS (
    SELECT s.*,
           CASE WHEN state IN ('QUEUED', 'CANCELLED') THEN 0
                WHEN heavy THEN @HW@
                WHEN state = 'FAILED' THEN 2 + floor(pg_temp.u(id, 21) * 2)::int
                ELSE 1 + floor(pg_temp.u(id, 21) * 2)::int END AS weight
    FROM s
), c AS (
    SELECT w.*, sum(weight) OVER (ORDER BY id) AS cw, sum(weight) OVER () AS total FROM w
)
SELECT c.*, (cw - weight) * @A@ / total + 1 AS first_attempt,
       cw * @A@ / total - (cw - weight) * @A@ / total AS n_att
FROM c
"""

PHASES_SQL = """
INSERT INTO phases (id, run_id, index, name, spec, state, attempts_used, deliveries, dispatched_at,
        started_at,
                    finished_at, commit_sha, failure_reason)
SELECT id, run_id, idx, pspec->>'name', pspec::json, state, n_att,
        CASE WHEN state = 'QUEUED' THEN 0 ELSE 1 END,
       CASE WHEN state <> 'QUEUED' THEN ps - interval '40 milliseconds' END,
       CASE WHEN state NOT IN ('QUEUED', 'CANCELLED') THEN ps END,
       CASE WHEN state IN ('COMPLETE', 'FAILED') THEN ps + slot END,
       CASE WHEN state = 'COMPLETE' THEN substr(md5(id || 'commit') || md5(id || 'c2'), 1, 40) END,
       CASE WHEN state = 'FAILED' THEN format('%s attempts used; last: validation failed', n_att) END
FROM ph
ORDER BY id
"""

PATCH = """diff --git a/%1$s b/%1$s
index %2$s..%3$s 100644
--- a/%1$s
+++ b/%1$s
@@ -%4$s,7 +%4$s,11 @@ def handle(request):
     # Handle one request and return its response.
-    payload = parse(request)
-    return respond(payload)
+    payload = parse(request)
+    if payload is None:
+        raise ValueError("empty request body")
+    result = respond(payload)
+    audit.record(request.id, result.status)
+    return result
"""
PYTEST = """$ python -m pytest -q
============================= test session starts ==============================
platform linux -- Python 3.11.9, pytest-8.3.3, pluggy-1.5.0
rootdir: /workspace
collected %s items

%s
%s
"""
PASSED = """%s passed in %s s
$ ruff check .
All checks passed!"""
FAILED = """=================================== FAILURES ===================================
____ test_handle_rejects_empty_body ____
    assert response.status == 400
E   assert 500 == 400
tests/test_handlers.py:%s: AssertionError
1 failed, %s passed in %s s"""

ATTEMPTS_SQL = """
WITH a AS (
    SELECT ph.first_attempt + k - 1 AS id, k AS number, ph.id AS phase_id, ph.run_id, ph.state AS phase_state,
           ph.pspec, ph.n_att, ph.ps + ph.slot * (k - 1) / ph.n_att AS started_at,
           ph.ps + ph.slot * k / ph.n_att AS finished_at,
           (ph.pspec->'scope'->>0) || (ARRAY['handlers', 'models', 'views', 'client',
                   'config'])[1 + ph.id % 5]
               || '.py' AS path
    FROM ph CROSS JOIN LATERAL generate_series(1, ph.n_att) AS k
    WHERE ph.n_att > 0
), o AS (
    SELECT a.*,
           CASE WHEN number = n_att AND phase_state = 'COMPLETE' THEN 'SUCCESS'
                WHEN pg_temp.u(id, 22) < 0.55 THEN 'VALIDATION_FAILED'
                WHEN pg_temp.u(id, 22) < 0.70 THEN 'BUILD_FAILED'
                WHEN pg_temp.u(id, 22) < 0.80 THEN 'SCOPE_VIOLATION'
                WHEN pg_temp.u(id, 22) < 0.90 THEN 'MISSING_DELIVERABLE'
                ELSE 'INFRA_ERROR' END AS outcome,
           CASE WHEN number <= 2 THEN 'claude-haiku-4-5' WHEN number <= 4 THEN 'claude-sonnet-4-6'
                ELSE 'claude-opus-4-6' END AS model,
           20 + id % 180 AS tests
    FROM a
)
INSERT INTO attempts (id, run_id, phase_id, number, worker, lease_epoch, started_at, finished_at, outcome,
                      failure_reason, builder_output, patch, changed_paths, validation_output,
                              commit_sha, model,
                      max_tokens, prompt_summary, context, mitigation, doctor, infra_failures)
SELECT id, run_id, phase_id, number, format('worker@fleet-%s', 1 + id % 4), number, started_at, finished_at,
       outcome,
       CASE outcome
            WHEN 'VALIDATION_FAILED' THEN
                    format('validation failed: python -m pytest -q exited 1 (%s failed)',
                                                 1 + id % 3)
            WHEN 'BUILD_FAILED' THEN 'builder returned no applicable diff: hunk 2 did not apply'
            WHEN 'SCOPE_VIOLATION' THEN 'changed setup.cfg, outside the phase scope'
            WHEN 'MISSING_DELIVERABLE' THEN format('deliverable %s was not created',
                    pspec->'deliverables'->>0)
            WHEN 'INFRA_ERROR' THEN 'provider error: 529 overloaded (after 3 retries)'
       END,
       format('Edited %s (+6 -2) and %s.', path, pspec->'deliverables'->>0),
       CASE WHEN outcome NOT IN ('BUILD_FAILED', 'INFRA_ERROR') THEN
            format(@PATCH@, path, substr(md5(id || 'a'), 1, 7), substr(md5(id || 'b'), 1, 7), 10 + id % 300)
       END,
       CASE WHEN outcome = 'SCOPE_VIOLATION' THEN json_build_array(path, 'setup.cfg')
            WHEN outcome IN ('BUILD_FAILED', 'INFRA_ERROR') THEN '[]'::json
            ELSE json_build_array(path, pspec->'deliverables'->>0) END,
       CASE WHEN outcome IN ('SUCCESS', 'VALIDATION_FAILED') THEN
            format(@PYTEST@, tests, repeat('.', (tests % 60 + 10)::int),
                   CASE WHEN outcome = 'SUCCESS' THEN format(@PASSED@, tests, 1 + id % 9)
                        ELSE format(@FAILED@, 20 + id % 80, tests - 1, 1 + id % 9) END)
       END,
       CASE WHEN outcome = 'SUCCESS' THEN substr(md5(id || 'sha') || md5(id || 's2'), 1, 40) END,
       model, CASE WHEN number <= 2 THEN 4096 ELSE 8192 END,
       format('phase %s, attempt %s: goal, 2 context files, %s scope files', pspec->>'name', number,
               1 + id % 6),
       json_build_object('files', json_build_array('README.md', 'docs/architecture.md', path),
                         'tokens_estimate', 3000 + id % 9000),
       NULL,
       CASE WHEN outcome NOT IN ('SUCCESS', 'INFRA_ERROR') AND pg_temp.u(id, 23) < 0.5 THEN
            json_build_object('action', 'retry', 'diagnosis', 'the test expects a 400 for an empty body')
       END,
       '[]'::json
FROM o
ORDER BY id
"""

# Each attempt gets @U@ / @A@ calls (event i belongs to attempt (i - 1) % @A@ + 1): its builder call(s),
# and a Doctor call after a failed try.
USAGE_SQL = """
WITH e AS (
    SELECT g.i, (g.i - 1) / @A@ AS k, a.run_id, a.phase_id, a.number, a.started_at,
           CASE WHEN (g.i - 1) / @A@ % 2 = 1 AND a.outcome <> 'SUCCESS' THEN 'doctor' ELSE 'builder' END
                   AS role,
           a.model AS builder_model
    FROM generate_series(1, @U@) AS g(i)
    JOIN attempts a ON a.id = (g.i - 1) % @A@ + 1
), f AS (
    SELECT e.*, CASE WHEN role = 'doctor' THEN 'claude-sonnet-4-6' ELSE builder_model END AS model,
           (2000 + pg_temp.u(i, 31) * 18000)::int AS inp,
           CASE WHEN pg_temp.u(i, 36) >= 0.02 THEN (200 + pg_temp.u(i, 32) * 3800)::int END AS outp,
           CASE WHEN pg_temp.u(i, 33) < 0.6 THEN (pg_temp.u(i, 34) * 8000)::int ELSE 0 END AS cr,
           CASE WHEN pg_temp.u(i, 33) >= 0.6 THEN (pg_temp.u(i, 35) * 4000)::int ELSE 0 END AS cw
    FROM e
), priced AS (
    SELECT f.*, CASE WHEN model LIKE 'claude-haiku%' THEN ARRAY[1, 5, 1.25, 0.10]
                     WHEN model LIKE 'claude-sonnet%' THEN ARRAY[3, 15, 3.75, 0.30]
                     ELSE ARRAY[5, 25, 6.25, 0.50] END::numeric[] AS price
    FROM f
)
INSERT INTO llm_usage_events (id, call_key, run_id, phase_id, attempt_number, provider, model, role,
        input_tokens,
                              output_tokens, cache_read_tokens, cache_write_tokens, latency_ms, request_id,
                              cost_usd, created_at)
SELECT i, format('run-%s/phase-%s/attempt-%s/%s-%s', run_id, phase_id, number, role, k), run_id,
        phase_id, number,
       'anthropic', model, role, inp, outp, cr, cw, (800 + pg_temp.u(i, 37) * 20000)::int,
       'req_' || substr(md5(i || 'req'), 1, 24),
       round((inp * price[1] + outp * price[2] + cw * price[3] + cr * price[4]) / 1000000, 6),
       started_at + make_interval(secs => 1 + k * 7)
FROM priced
ORDER BY i
"""

METRICS_SQL = """
INSERT INTO phase_metrics (id, phase_id, run_id, failure_hardening_hit, doctor_skipped, doctor_tokens_avoided,
                           estimate_source, estimate_sample_size)
SELECT row_number() OVER (ORDER BY id), id, run_id, pg_temp.u(id, 41) < 0.12, pg_temp.u(id, 42) < 0.2,
       CASE WHEN pg_temp.u(id, 42) < 0.2 THEN 3000 + (pg_temp.u(id, 43) * 9000)::int END,
       'history', 20 + (pg_temp.u(id, 44) * 200)::int
FROM ph WHERE state IN ('COMPLETE', 'FAILED');

INSERT INTO efficiency_metrics (id, run_id, phase_id, outcome, tokens_spent, tokens_avoided_context, attempts,
                                wall_ms, created_at)
SELECT row_number() OVER (ORDER BY id), run_id, id,
        CASE state WHEN 'COMPLETE' THEN 'SUCCESS' ELSE 'FAILED' END,
       n_att * (6000 + (pg_temp.u(id, 45) * 20000)::int), (pg_temp.u(id, 46) * 15000)::int, n_att,
       (extract(epoch FROM slot) * 1000)::int, ps + slot
FROM ph WHERE state IN ('COMPLETE', 'FAILED')
"""

# Pairs judged as `shared.campaigns.judge` would: INFRA first, then a cancelled side, else VALID (both
# sides share the task and base commit by construction); outcome = both sides' `_side` figures.
PAIRS_SQL = """
WITH pr AS (
    SELECT row_number() OVER (ORDER BY b.c, j) AS id, b.c AS campaign_id, b.child_start - b.n + j AS source,
           b.child_start + j AS child
    FROM cblock b CROSS JOIN LATERAL generate_series(0, b.n - 1) AS j
), ids AS (
    SELECT source AS run_id FROM pr UNION SELECT child FROM pr
), att AS (
    SELECT run_id, count(*) AS n FROM attempts WHERE run_id IN (SELECT run_id FROM ids) GROUP BY run_id
), use AS (
    SELECT run_id, sum(coalesce(input_tokens, 0)) AS i, sum(coalesce(output_tokens, 0)) AS o,
           sum(coalesce(cache_read_tokens, 0)) AS cr, sum(coalesce(cache_write_tokens, 0)) AS cw,
           sum(coalesce(cost_usd, 0)) AS usd
    FROM llm_usage_events WHERE run_id IN (SELECT run_id FROM ids) GROUP BY run_id
), wall AS (
    SELECT run_id, sum(extract(epoch FROM finished_at - started_at)) AS w
    FROM phases WHERE run_id IN (SELECT run_id FROM ids) AND finished_at IS NOT NULL AND started_at IS
            NOT NULL
    GROUP BY run_id
), side AS (
    SELECT r.id, r.state, r.failure_kind, r.failure_reason,
           json_build_object('run_id', r.id, 'success', r.state = 'DONE_SUCCESS', 'state', r.state,
                             'failure_kind', r.failure_kind, 'attempts', coalesce(att.n, 0),
                             'tokens', json_build_object('input', coalesce(use.i, 0), 'output',
                                     coalesce(use.o, 0),
                                                         'cache_read', coalesce(use.cr, 0),
                                                         'cache_write', coalesce(use.cw, 0)),
                             'cost_usd', coalesce(use.usd, 0)::numeric(14, 6)::text,
                             'wall_s', round(wall.w, 3)) AS js
    FROM runs r JOIN ids ON ids.run_id = r.id
    LEFT JOIN att ON att.run_id = r.id LEFT JOIN use ON use.run_id = r.id LEFT JOIN wall ON wall.run_id = r.id
)
INSERT INTO campaign_pairs (id, campaign_id, source_run_id, sample, a_run_id, b_run_id, state, reason,
        outcome,
                            judged_at)
SELECT pr.id, pr.campaign_id, pr.source, 0, pr.source, pr.child,
       CASE WHEN 'INFRA' IN (a.failure_kind, b.failure_kind) THEN 'INFRA_INVALID'
            WHEN 'CANCELLED' IN (a.state, b.state) THEN 'INVALID'
            ELSE 'VALID' END,
       CASE WHEN a.failure_kind = 'INFRA'
                 THEN format('A (run %s) ended by infrastructure: %s', a.id, left(a.failure_reason, 300))
            WHEN b.failure_kind = 'INFRA'
                 THEN format('B (run %s) ended by infrastructure: %s', b.id, left(b.failure_reason, 300))
            WHEN a.state = 'CANCELLED' THEN format('A (run %s) was cancelled', a.id)
            WHEN b.state = 'CANCELLED' THEN format('B (run %s) was cancelled', b.id)
       END,
       json_build_object('a', a.js, 'b', b.js), c.finished_at
FROM pr JOIN side a ON a.id = pr.source JOIN side b ON b.id = pr.child JOIN campaigns c ON c.id =
        pr.campaign_id
ORDER BY pr.id
"""

SEQUENCED = (
    "runs",
    "phases",
    "attempts",
    "llm_usage_events",
    "campaigns",
    "campaign_pairs",
    "phase_metrics",
    "efficiency_metrics",
)


def _finish(conn: psycopg.Connection[Any], say: Say) -> None:
    """Sequences continue after the generated ids; fresh statistics for the planner."""
    start = time.perf_counter()
    for table in SEQUENCED:
        conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
    conn.execute("ANALYZE")
    say(f"    setval + ANALYZE: {time.perf_counter() - start:.1f} s")


def describe(db_url: str) -> GeneratedData:
    """The ids of a database `generate` filled earlier (to measure it again without regenerating)."""
    with psycopg.connect(_libpq_url(db_url)) as conn:
        return _describe(conn, 0.0)


def _describe(conn: psycopg.Connection[Any], seconds: float) -> GeneratedData:
    counts = {t: _scalar(conn, f"SELECT count(*) FROM {t}") for t in SEQUENCED}
    heavy = conn.execute(
        "SELECT run_id, count(*) FROM attempts GROUP BY run_id ORDER BY count(*) DESC, run_id DESC LIMIT 1"
    ).fetchone()
    assert heavy is not None
    page = min(PAGE, counts["runs"] // PAGE_SIZE)
    # The listing continues below the cursor (id < cursor): page p starts after the last id of page p - 1.
    cursor = _scalar(
        conn, f"SELECT id FROM runs ORDER BY id DESC OFFSET {(page - 1) * PAGE_SIZE - 1} LIMIT 1"
    )
    campaign = _scalar(
        conn,
        "SELECT campaign_id FROM campaign_pairs WHERE state = 'VALID' "
        "GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1",
    )
    return GeneratedData(
        runs=counts["runs"],
        phases=counts["phases"],
        attempts=counts["attempts"],
        usage_events=counts["llm_usage_events"],
        campaigns=counts["campaigns"],
        campaign_pairs=counts["campaign_pairs"],
        heavy_run_id=int(heavy[0]),
        heavy_run_attempts=int(heavy[1]),
        campaign_id=campaign,
        owners=OWNERS,
        page_cursor=cursor,
        seconds=seconds,
    )


def _scalar(conn: psycopg.Connection[Any], sql: str) -> int:
    row = conn.execute(sql).fetchone()
    if row is None:
        raise RuntimeError(f"no row: {sql}")
    return int(row[0])
