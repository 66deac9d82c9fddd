"""Fleet mode across real network boundaries: two `autopack worker` processes, each in its own Linux network
namespace (a separate "host" that reaches Postgres and Redis only over a veth link), and an `autopack api` in
the root namespace. The per-run lease must hold across hosts: phases of one run never overlap."""

from __future__ import annotations

from pathlib import Path

import pytest

from api.client import ApiClient
from api.serve import free_port
from shared.db import transaction
from shared.keys import create_key
from shared.settings import Settings
from tests.support.netns import netns_fleet, netns_unavailable, wait_ready
from tests.support.procs import api_process
from tests.support.scenario import check_scenario, submit_runs, wait_terminal

pytestmark = pytest.mark.fleet

RUNS = 6


@pytest.fixture
def hosts_settings(fleet_settings: Settings) -> Settings:
    """The session's own Redis database (conftest's `session_redis`): no other suite consumes it."""
    return fleet_settings


def attempt_pid(attempt: dict[str, object]) -> int:
    """The executing process's pid: attempt.worker is `<hostname>/<pid>/<nonce>`."""
    return int(str(attempt["worker"]).split("/")[1])


def test_workers_in_two_network_namespaces_share_runs_and_never_overlap_phases_of_one_run(
    hosts_settings: Settings, sample_repo: Path, tmp_path: Path
) -> None:
    why = netns_unavailable()
    assert not why, f"network namespaces are needed for this test (run as root with iproute2): {why}"
    with transaction(hosts_settings.database_url) as session:
        _, key = create_key(session, "hosts-test")
    with (
        netns_fleet(hosts_settings, 2, tmp_path, tmp_path, wait=False) as members,
        api_process(hosts_settings, free_port(), tmp_path) as url,  # starts while the workers do
    ):
        wait_ready({host.name: worker for host, worker, _ in members})
        client = ApiClient(url, key)
        try:
            ids = submit_runs(client, sample_repo, RUNS)
            runs = wait_terminal(client, ids, timeout=120)  # ~30 s on an idle 2-CPU machine
        finally:
            client.close()
        # Read while the workers (and their prefork children) are still alive.
        pids = {host.name: host.pids() for host, _, _ in members}
        for host, worker, _ in members:
            assert worker.pid in pids[host.name], f"{host.name}'s worker is not in its namespace"
        forwarded = {host.name: {port: f.connections for port, f in fwd.items()} for host, _, fwd in members}

    check_scenario(sample_repo, runs)  # all DONE_SUCCESS, ordered commits, phases of one run never overlap
    host_of = {pid: name for name, members_pids in pids.items() for pid in members_pids}
    attempts = [a for r in runs for p in r["phases"] for a in p["attempt_log"]]
    executed = [host_of.get(attempt_pid(a)) for a in attempts]
    assert None not in executed, f"an attempt ran outside the namespaces: {[a['worker'] for a in attempts]}"
    assert set(executed) == set(pids), f"not every host executed phases: {executed}"
    run_hosts = {
        r["id"]: {host_of[attempt_pid(a)] for p in r["phases"] for a in p["attempt_log"]} for r in runs
    }
    assert len({h for hosts in run_hosts.values() for h in hosts}) == 2, run_hosts
    for name, ports in forwarded.items():
        assert all(n > 0 for n in ports.values()), f"{name} never went through its forwarder: {ports}"
        assert list((tmp_path / name / "worktrees").glob("*/slot-*/.git")), f"{name} has no worktrees"
