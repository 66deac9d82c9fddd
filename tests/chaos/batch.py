"""One chaos batch: a real API and fleet, runs submitted in waves while the fault thread works, until
every run has ended."""

from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from api.client import ApiClient
from api.serve import free_port
from shared.db import transaction
from shared.keys import create_key
from shared.settings import Settings
from tests.chaos.config import ChaosConfig, Db, batch_spec, chaos_settings, killer_spec, log, run_spec
from tests.chaos.faults import Chaos, ChaosState
from tests.chaos.fleet import Fleet
from tests.chaos.llm import Answered, answered, simulators
from tests.chaos.services import services_guard
from tests.support.gitshim import FIRST_USE_STEPS
from tests.support.procs import api_process


@dataclass
class BatchResult:
    cfg: ChaosConfig
    run_ids: list[int]
    killer_id: int
    state: ChaosState
    seconds: float
    repo: Path
    workspaces: list[Path]
    marks: Path
    """The runs' marker files (`marks/chaos-<k>`, k = index in `run_ids`), see config.MARK."""
    answered: list[Answered]
    """Every request the LLM simulators answered, by worker."""


def run_chaos(
    cfg: ChaosConfig, base: Settings, repo: Path, root: Path, disk: Path | None = None
) -> BatchResult:
    """Run the batch under faults; return once every run is terminal (or the settle timeout passed)."""
    names = [f"w{i}" for i in range(cfg.workers)]
    with simulators(names) as sims:
        settings = chaos_settings(base).model_copy(
            update={
                "anthropic_api_key": SecretStr("sk-chaos"),
                "anthropic_base_url": sims[names[0]].base_url,  # each worker gets its own (fleet.py)
            }
        )
        fleet = Fleet(
            settings, root, cfg.workers, cfg.concurrency, disk, {n: sims[n].base_url for n in names}
        )
        res = _batch(cfg, settings, fleet, repo, root / "marks", disk)
        res.answered = answered(sims)
    return res


def _batch(
    cfg: ChaosConfig, settings: Settings, fleet: Fleet, repo: Path, marks: Path, disk: Path | None
) -> BatchResult:
    t0 = time.monotonic()
    marks.mkdir()
    db = Db(settings.database_url)
    with transaction(settings.database_url) as session:
        _, key = create_key(session, "chaos")
    services = threading.Lock()
    chaos = Chaos(cfg, settings, fleet, db, services)
    ids: list[int] = []
    log(f"seed={cfg.seed} runs>={cfg.runs} workers={cfg.workers}x{cfg.concurrency}")
    with services_guard(settings.database_url):
        for name in fleet.names:  # workers boot while the API does
            fleet.start(name, wait=False)
        try:
            with api_process(settings, free_port(), fleet.root) as url:
                client = ApiClient(url, key)
                fleet.start_all(started=True)
                log("fleet ready")

                def submit(spec: dict[str, Any]) -> int:
                    with services:
                        return int(client.submit(spec)["id"])

                killer_id = submit(killer_spec(repo))
                ids.append(submit(run_spec(repo, 0, marks)))  # the source the replayed runs re-emit
                wait_terminal(db, ids, 60)
                for _ in range(cfg.wave):
                    ids.append(submit(batch_spec(repo, len(ids), ids[0], marks)))
                chaos.thread.start()
                while not chaos.state.done.is_set() or len(ids) < cfg.runs:
                    # The worker-killing run stays live through all its deliveries: it is no work a
                    # waiting fault can use, so it must not hold back the runs that fault needs.
                    busy = db.rows(
                        "SELECT count(*) AS n FROM runs WHERE state IN ('QUEUED', 'RUNNING') AND id <> :k",
                        k=killer_id,
                    )[0].n
                    slots = cfg.workers * cfg.concurrency
                    wanted = len(ids) < cfg.max_runs or (chaos.state.need_work.is_set() and busy < slots)
                    if wanted and busy < cfg.workers * cfg.concurrency * 2:
                        for _ in range(cfg.wave):
                            ids.append(submit(batch_spec(repo, len(ids), ids[0], marks)))
                    time.sleep(0.5)
                chaos.thread.join()
                log(f"faults done ({len(ids)} runs submitted); waiting for every run to end")
                wait_terminal(db, [*ids, killer_id], cfg.settle_timeout)
                # One more reconciler period: nothing may wake up and change a finished run.
                time.sleep(settings.reconcile_interval_seconds * 2)
        finally:
            fleet.stop_all()
    chaos.state.exited = fleet.exited
    chaos.state.disk_handbacks = fleet.disk_handbacks() if disk else 0
    chaos.state.first_use_kills = [s for s in fleet.git_kills() if s in FIRST_USE_STEPS]
    return BatchResult(
        cfg,
        ids,
        killer_id,
        chaos.state,
        time.monotonic() - t0,
        repo,
        [fleet.workspace(n) for n in fleet.names],
        marks,
        [],
    )


def wait_terminal(db: Db, ids: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = db.rows(
            "SELECT count(*) AS n FROM runs WHERE id = ANY(:ids) AND state IN ('QUEUED', 'RUNNING')", ids=ids
        )
        if left[0].n == 0:
            return
        time.sleep(0.5)
    log(f"not every run terminal after {timeout}s")
    for row in db.rows(
        "SELECT pid, application_name AS app, state, wait_event_type AS wt, wait_event AS w,"
        " now() - xact_start AS xact, left(query, 90) AS q FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    ):
        log(f"pg: {tuple(row)}")
    for row in db.rows(
        "SELECT r.id, r.lease_owner, r.lease_epoch, r.lease_expires_at - now() AS left, p.index, p.state"
        " FROM runs r JOIN phases p ON p.run_id = r.id WHERE p.state = 'EXECUTING'"
    ):
        log(f"executing: {tuple(row)}")
    ps = subprocess.run(["ps", "-eo", "pid,ppid,stat,wchan:20,etime,cmd"], capture_output=True, text=True)
    log("processes:\n" + "\n".join(x[:160] for x in ps.stdout.splitlines() if "h-chaos" in x or "git" in x))
