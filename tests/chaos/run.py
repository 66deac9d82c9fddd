"""`python -m tests.chaos.run`: the full chaos batch on a fresh Postgres database and a Redis database
of its own (conftest `session_redis`).

Prints the seed, the faults injected and an invariants table; exits 1 only if an invariant fails.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

import redis

from api.sample_repo import make_sample_repo
from shared.db import engine_for, upgrade
from shared.settings import Settings
from tests.chaos import evidence
from tests.chaos.batch import run_chaos
from tests.chaos.checks import Check, check_invariants, faults_complete, render
from tests.chaos.config import ChaosConfig, chaos_settings, log
from tests.chaos.services import disk_for, services_guard, start_postgres, start_redis
from tests.conftest import PG_ADMIN, REDIS_URL, create_database, drop_database


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--stops", type=int, default=10)
    ap.add_argument("--redis-restarts", type=int, default=1)
    ap.add_argument("--pg-restarts", type=int, default=1)
    ap.add_argument("--disk-fills", type=int, default=1, help="fill a worker's tmpfs workspace to ENOSPC")
    ap.add_argument("--git-kills", type=int, default=10, help="SIGKILL a worker inside a random git step")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, repo, workspaces)")
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    cfg = ChaosConfig(
        runs=args.runs,
        workers=args.workers,
        kills=args.kills,
        stops=args.stops,
        redis_restarts=args.redis_restarts,
        pg_restarts=args.pg_restarts,
        disk_fills=args.disk_fills,
        git_kills=args.git_kills,
        seed=seed,
    )
    print(f"chaos seed: {seed} (rerun with --seed {seed})", flush=True)
    root = Path(tempfile.mkdtemp(prefix="autopack-chaos-"))
    name = f"autopack_chaos_{os.getpid()}"
    admin_url = PG_ADMIN
    with services_guard(admin_url):
        start_postgres(admin_url)
        start_redis()
        url = create_database(name)
        try:
            upgrade(url)
            redis.Redis.from_url(REDIS_URL).flushdb()
            base = Settings(
                database_url=url,
                broker_url=REDIS_URL,
                workspace_dir=root / "workspace",
                auth_required=True,
                allowed_repos=[f"{root.resolve()}/**"],
                _env_file=None,  # type: ignore[call-arg]
            )
            repo = make_sample_repo(root / "origin")
            with disk_for(cfg, root) as disk, evidence.installed(url):
                res = run_chaos(cfg, base, repo, root, disk)
                checks = check_invariants(res, chaos_settings(base))
            checks.append(
                Check(
                    "every planned fault was injected", faults_complete(res, cfg), "; ".join(res.state.errors)
                )
            )
            print(render(checks, res, cfg), flush=True)
            failed = [c.name for c in checks if not c.ok]
        finally:
            engine_for(url).dispose()
            drop_database(name)
            if args.keep:
                log(f"kept {root}")
            else:
                shutil.rmtree(root, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
