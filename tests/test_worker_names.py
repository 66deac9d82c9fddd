"""Two `autopack worker` processes started on one host without `--hostname` are two Celery nodes:
each has a name of its own, and `/fleet` and `autopack fleet` list both."""

from __future__ import annotations

import signal
import time
from contextlib import ExitStack
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api import cli
from api.serve import api_in_thread
from shared.settings import Settings
from tests.support.procs import worker_process
from workers.celery_app import create_app as create_celery
from workers.main import default_node_name


def test_the_default_node_name_is_unique_per_process() -> None:
    name = default_node_name()
    assert name.endswith("@%h") and name != "celery@%h"
    assert name.split("@")[0].rsplit("-", 1)[1].isdigit()  # the pid


def _worker_names(client: TestClient, want: int, timeout: float = 30) -> list[str]:
    """The workers `/fleet` lists once `want` of them answer (a node answers inspect a moment after
    it says ready)."""
    deadline = time.monotonic() + timeout
    names: list[str] = []
    while time.monotonic() < deadline:
        view = client.get("/fleet").json()
        names = sorted(w["name"] for w in view["workers"])
        if len(names) >= want:
            return names
        time.sleep(0.5)
    return names


def test_two_workers_without_hostname_on_one_host_get_different_names(
    client: TestClient,
    fleet_settings: Settings,
    api_key: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with ExitStack() as stack:
        procs = [
            stack.enter_context(worker_process(fleet_settings, f"w{i}", tmp_path, concurrency=1, named=False))
            for i in range(2)
        ]
        names = _worker_names(client, 2)
        with api_in_thread(fleet_settings, create_celery(fleet_settings)) as url:
            settings = fleet_settings.model_copy(update={"api_url": url, "api_key": SecretStr(api_key)})
            monkeypatch.setattr(cli, "get_settings", lambda: settings)
            deadline = time.monotonic() + 30  # inspect waits ~1 s for replies: a loaded host may miss one
            result = CliRunner().invoke(cli.cli, ["fleet"])
            while "workers: 2" not in result.output and time.monotonic() < deadline:
                result = CliRunner().invoke(cli.cli, ["fleet"])
        for proc in procs:
            proc.stop(signal.SIGKILL)  # idle: nothing to shut down gracefully, and the suite stays fast
    assert len(names) == 2 and names[0] != names[1], names
    pids = sorted(f"autopack-{p.pid}@" for p in procs)
    assert [n.split("@")[0] + "@" for n in names] == pids
    assert result.exit_code == 0, result.output
    assert "workers: 2" in result.output
    for name in names:
        assert name in result.output
