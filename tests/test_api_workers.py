"""`AUTOPACK_API_WORKERS`: the API is served by that many processes, each holding the listening socket
(seen from outside, through /proc), and concurrent submissions all succeed."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest

from api.serve import free_port
from shared.db import transaction
from shared.keys import create_key
from shared.settings import Settings
from tests.support.procs import api_process

pytestmark = pytest.mark.fleet


def _listening_pids(port: int) -> set[int]:
    """Processes holding a socket listening on `port` (uvicorn's workers share the one socket)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
                inodes.add(fields[9])
    pids = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            links = {str(fd.readlink()) for fd in (proc / "fd").iterdir()}
        except OSError:
            continue
        if any(f"socket:[{inode}]" in links for inode in inodes):
            pids.add(int(proc.name))
    return pids


def test_two_api_processes_serve_concurrent_submissions(
    fleet_settings: Settings, sample_repo: Path, tmp_path: Path
) -> None:
    settings = fleet_settings.model_copy(update={"api_workers": 2})
    with transaction(settings.database_url) as session:
        _, key = create_key(session, "workers")
    port = free_port()
    statuses: list[int] = []
    lock = threading.Lock()
    with api_process(settings, port, tmp_path) as url:
        serving = _listening_pids(port)
        assert len(serving) >= 3, serving  # the supervisor and its two workers share the socket

        def submit(k: int) -> None:
            body = {
                "repo": str(sample_repo),
                "name": f"parallel-{k}",
                "phases": [{"name": "p", "scope": ["src/"], "command": "true", "validation": ["true"]}],
            }
            with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=30) as client:
                got = [client.post("/runs", json=body).status_code for _ in range(4)]
            with lock:
                statuses.extend(got)

        threads = [threading.Thread(target=submit, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert statuses == [201] * 32
