"""(i) Dashboard: server response times of the `/ui` pages and the JSON routes they stand on, over a
generated history (`tests/bench/dashboard_data.py`: 100,000 runs, 1,000,000 usage events).

A real `autopack api` process (fleet settings, auth required, an ADMIN key) is timed from the client on
localhost: 3 warm-up requests, then `requests` timed ones per route. A route that answers a
`Server-Timing` header has that figure reported too. Timing never fails the bench; a route that does not
answer 200 is reported with its status instead.

`explain_routes` replays the same routes in-process, captures the SQL each issues (SQLAlchemy's
`before_cursor_execute`), and runs `EXPLAIN (ANALYZE, BUFFERS)` on every SELECT, to say which query a
slow route waits on.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from fastapi.testclient import TestClient

from api.app import create_app
from api.serve import free_port
from shared.db import transaction
from shared.keys import create_key
from tests.bench.dashboard_data import GeneratedData
from tests.bench.orchestration import fleet_settings
from tests.bench.stats import Row, Summary, ms
from tests.support.procs import api_process
from workers.celery_app import create_app as create_celery

SECTION = "(i) dashboard"
REDIS_URL = "redis://127.0.0.1:6379/11"
"""The API's broker setting; these read-only routes never send to it."""
PAGE_TARGET_MS = 150.0
METRICS_TARGET_MS = 50.0
WARMUP = 3
SESSION_COOKIE = "autopack_session"
CSRF = re.compile(r'name="csrf_token"\s+value="([^"]*)"|value="([^"]*)"\s+name="csrf_token"')
SERVER_TIMING_DUR = re.compile(r"dur=([0-9.]+)")

Route = tuple[str, str]
"""(label, path)."""


def ui_pages(data: GeneratedData) -> list[Route]:
    """The dashboard's pages (the contract of `api/ui/`, built alongside this bench)."""
    return [
        ("/ui overview", "/ui"),
        ("/ui/runs page 1", "/ui/runs"),
        ("/ui/runs page 500", f"/ui/runs?cursor={data.page_cursor}"),
        (f"/ui/runs/{{id}} ({data.heavy_run_attempts} attempts)", f"/ui/runs/{data.heavy_run_id}"),
        ("/ui/campaigns/{id} with report", f"/ui/campaigns/{data.campaign_id}"),
    ]


def json_routes(data: GeneratedData) -> list[Route]:
    """The JSON routes the pages stand on, with the X-API-Key header."""
    return [
        ("GET /runs?limit=50", "/runs?limit=50"),
        ("GET /runs?cursor=… page 500", f"/runs?cursor={data.page_cursor}&limit=50"),
        (f"GET /runs/{{id}} ({data.heavy_run_attempts} attempts)", f"/runs/{data.heavy_run_id}"),
        ("GET /runs/{id}/metrics", f"/runs/{data.heavy_run_id}/metrics"),
        ("GET /campaigns/{id}/report", f"/campaigns/{data.campaign_id}/report"),
    ]


def target_ms(path: str) -> float:
    return METRICS_TARGET_MS if path.split("?")[0].endswith("/metrics") else PAGE_TARGET_MS


@dataclass
class RouteTiming:
    label: str
    path: str
    kind: str
    """"json" or "ui"."""
    client: Summary
    server: Summary | None
    """From the `Server-Timing` header, when every timed response had one."""
    statuses: dict[int, int] = field(default_factory=dict)
    bytes: int = 0
    first_ms: float = float("nan")
    """The first (warm-up) request: for the campaign report, the one that judges and computes."""

    @property
    def target_ms(self) -> float:
        return target_ms(self.path)

    @property
    def ok(self) -> bool:
        return set(self.statuses) == {200}

    def rows(self) -> list[Row]:
        if not self.ok:
            return [Row(SECTION, self.label, "n/a", versus=f"statuses {self.statuses}")]
        verdict = "met" if self.client.p95_ms <= self.target_ms else "MISSED"
        versus = f"p95 target <= {ms(self.target_ms)}; {self.bytes:,} B; first {ms(self.first_ms)}"
        out = [Row.timing(SECTION, f"{self.label} (client)", self.client, versus, verdict)]
        if self.server is not None:
            out.append(Row.timing(SECTION, f"{self.label} (Server-Timing)", self.server))
        return out


@dataclass
class DashboardResult:
    data: GeneratedData
    routes: list[RouteTiming]
    notes: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {
            "data": asdict(self.data),
            "routes": [asdict(r) | {"target_ms": r.target_ms} for r in self.routes],
            "notes": self.notes,
        }

    def rows(self) -> list[Row]:
        d = self.data
        generated = f"{d.runs:,} runs, {d.attempts:,} attempts, {d.usage_events:,} usage events"
        took = ms(self.data.seconds * 1000) if self.data.seconds else "reused"
        head = [Row(SECTION, f"generate {generated}", took)]
        return head + [row for r in self.routes for row in r.rows()]


def new_admin_key(db_url: str) -> str:
    with transaction(db_url) as session:
        _, plain = create_key(session, "dashboard-bench", admin=True)
    return plain


def bench(
    db_url: str,
    redis_url: str,
    workdir: Path,
    logdir: Path,
    data: GeneratedData,
    *,
    requests: int = 50,
    pages: Sequence[Route] | None = None,
    apis: Sequence[Route] | None = None,
    say: Callable[[str], None] = print,
) -> DashboardResult:
    """Time `pages` (default: `ui_pages`) after logging in, and `apis` (default: `json_routes`)."""
    settings = fleet_settings(db_url, redis_url, workdir / "workspace")
    key = new_admin_key(db_url)
    logdir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    routes: list[RouteTiming] = []
    with api_process(settings, free_port(), logdir) as url:
        with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=60) as client:
            for label, path in apis if apis is not None else json_routes(data):
                routes.append(time_route(client, label, path, "json", requests))
                say(f"    {routes[-1].label}: {describe(routes[-1])}")
        with httpx.Client(base_url=url, timeout=60) as browser:
            problem = login(browser, key)
            if problem is not None:
                notes.append(f"(i) dashboard pages not timed: {problem}")
                say(f"    {notes[-1]}")
            else:
                for label, path in pages if pages is not None else ui_pages(data):
                    routes.append(time_route(browser, label, path, "ui", requests))
                    say(f"    {routes[-1].label}: {describe(routes[-1])}")
    return DashboardResult(data, routes, notes)


def describe(r: RouteTiming) -> str:
    if not r.ok:
        return f"statuses {r.statuses}"
    server = f", Server-Timing p50 {r.server.median_ms:.1f} ms" if r.server is not None else ""
    return f"p50 {r.client.median_ms:.1f} ms, p95 {r.client.p95_ms:.1f} ms{server}"


def login(browser: httpx.Client, key: str) -> str | None:
    """Log in through the form (CSRF token from the page, its cookie kept); None, or what went wrong."""
    page = browser.get("/ui/login")
    if page.status_code != 200:
        return f"GET /ui/login answered {page.status_code}"
    found = CSRF.search(page.text)
    if found is None:
        return "GET /ui/login has no csrf_token field"
    token = found.group(1) or found.group(2)
    answer = browser.post("/ui/login", data={"api_key": key, "csrf_token": token}, follow_redirects=False)
    if answer.status_code != 303 or SESSION_COOKIE not in browser.cookies:
        return f"POST /ui/login answered {answer.status_code} without a {SESSION_COOKIE} cookie"
    return None


def time_route(client: httpx.Client, label: str, path: str, kind: str, requests: int) -> RouteTiming:
    start = time.perf_counter()
    client.get(path)
    first = time.perf_counter() - start
    for _ in range(WARMUP - 1):  # connection, caches, and a first report computation are not what we time
        client.get(path)
    seconds: list[float] = []
    server: list[float] = []
    statuses: dict[int, int] = {}
    size = 0
    for _ in range(requests):
        start = time.perf_counter()
        response = client.get(path)
        seconds.append(time.perf_counter() - start)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        size = len(response.content)
        if (figure := server_timing_ms(response.headers.get("server-timing"))) is not None:
            server.append(figure / 1000)
    has_server = len(server) == len(seconds)
    server_summary = Summary.of(server) if has_server else None
    return RouteTiming(label, path, kind, Summary.of(seconds), server_summary, statuses, size, first * 1000)


def server_timing_ms(header: str | None) -> float | None:
    """The largest `dur` of a Server-Timing header: a total covers its parts, so the largest is the total."""
    if not header:
        return None
    durations = [float(d) for d in SERVER_TIMING_DUR.findall(header)]
    return max(durations) if durations else None


# --- EXPLAIN of what each route issues -------------------------------------------------------------


@dataclass
class Explained:
    label: str
    statement: str
    execution_ms: float
    plan: str


@contextmanager
def captured_sql() -> Iterator[list[tuple[str, Any]]]:
    """Every statement any engine of this process sends, with its parameters, while the block runs."""
    seen: list[tuple[str, Any]] = []

    def listen(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        seen.append((statement, parameters))

    sa.event.listen(sa.Engine, "before_cursor_execute", listen)
    try:
        yield seen
    finally:
        sa.event.remove(sa.Engine, "before_cursor_execute", listen)


def explain_routes(
    db_url: str, redis_url: str, apis: Sequence[Route], pages: Sequence[Route], workdir: Path
) -> list[Explained]:
    """Each route once through the app in-process (`pages` after logging in, when the dashboard is
    there); EXPLAIN (ANALYZE, BUFFERS) of every SELECT it sent."""
    settings = fleet_settings(db_url, redis_url, workdir / "workspace")
    key = new_admin_key(db_url)
    app = create_app(settings, create_celery(settings))
    with TestClient(app, headers={"X-API-Key": key}) as client:
        out = _explain_each(db_url, client, apis)
    with TestClient(app) as browser:
        if pages and login(browser, key) is None:
            out += _explain_each(db_url, browser, pages)
    return out


def _explain_each(db_url: str, client: TestClient, routes: Sequence[Route]) -> list[Explained]:
    out: list[Explained] = []
    for label, path in routes:
        client.get(path)  # warm: the first call's one-off queries (a report computed) are not the route's
        with captured_sql() as seen:
            client.get(path)
        out += [explain(db_url, label, s, p) for s, p in seen if s.lstrip().upper().startswith("SELECT")]
    return out


def slowest(explained: Sequence[Explained], over_ms: float = 5.0) -> list[str]:
    """One line per query that took longer than `over_ms` in EXPLAIN ANALYZE, slowest first."""
    slow = sorted((e for e in explained if e.execution_ms > over_ms), key=lambda e: -e.execution_ms)
    return [f"(i) {e.label}: {e.execution_ms:.1f} ms in `{_gist(e.statement)}`" for e in slow]


def _gist(statement: str) -> str:
    flat = " ".join(statement.split())
    found = re.search(r"\bFROM\b.*", flat)
    return (found.group(0) if found else flat)[:140]


def explain(db_url: str, label: str, statement: str, parameters: Any) -> Explained:
    engine = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS) {statement}", parameters).scalars().all()
    plan = "\n".join(rows)
    found = re.search(r"Execution Time: ([0-9.]+) ms", plan)
    return Explained(label, statement, float(found.group(1)) if found else float("nan"), plan)


def write_explain(path: Path, explained: Sequence[Explained]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = [f"## {e.label}: {e.execution_ms:.2f} ms\n\n{e.statement}\n\n{e.plan}\n" for e in explained]
    path.write_text("\n".join(parts))
