"""The short chaos batch (the full one is `make chaos`): kills, kills inside git, fencing, a Redis
restart, a full disk, invariants."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from shared.settings import Settings
from tests.chaos import evidence
from tests.chaos.batch import run_chaos
from tests.chaos.checks import check_invariants, faults_complete, render
from tests.chaos.config import ChaosConfig, chaos_settings
from tests.chaos.services import disk_for

pytestmark = [pytest.mark.fleet, pytest.mark.exclusive]  # it restarts Redis


def test_short_chaos_batch_keeps_every_invariant(
    fleet_settings: Settings, sample_repo: Path, tmp_path: Path
) -> None:
    cfg = ChaosConfig(
        runs=10,
        workers=3,
        kills=5,
        stops=2,
        redis_restarts=1,
        pg_restarts=0,
        disk_fills=1,
        git_kills=3,
        seed=random.SystemRandom().randrange(1 << 31),
        max_runs=20,
        settle_timeout=60,
    )
    with disk_for(cfg, tmp_path) as disk, evidence.installed(fleet_settings.database_url):
        res = run_chaos(cfg, fleet_settings, sample_repo, tmp_path, disk)
        checks = check_invariants(res, chaos_settings(fleet_settings))
    table = render(checks, res, cfg)
    print(table)
    assert faults_complete(res, cfg), table
    assert all(c.ok for c in checks), table
