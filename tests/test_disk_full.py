"""A full workspace disk is the host's fault: the phase is handed back, named, and nothing is lost.

The workspace lives on a real 16 MiB tmpfs (mounting needs root, as the network-namespace tests do).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from api.client import ApiClient
from api.serve import api_in_thread
from shared.settings import Settings
from tests.support.scenario import wait_terminal
from workers.embedded import embedded_fleet

SIZE_MB = 16


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small-disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE_MB}m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


@pytest.fixture
def settings(embedded_settings: Settings, small_disk: Path) -> Settings:
    return embedded_settings.model_copy(
        update={
            "workspace_dir": small_disk / "workspace",
            "min_free_disk_mb": 4,
            "max_deliveries": 3,
            "redispatch_after_seconds": 0.5,
        }
    )


def _spec(repo: Path, command: str) -> dict[str, Any]:
    return {
        "repo": str(repo),
        "config": {"max_attempts": 2, "doctor": False},
        "phases": [
            {"name": "writes", "scope": ["src/"], "command": command, "validation": ["true"]},
            {"name": "after", "scope": ["src/"], "command": "echo 1 > src/after.py", "validation": ["true"]},
        ],
    }


def _wait(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return value


def test_a_phase_that_fills_the_disk_on_every_delivery_fails_with_the_disk_named_after_max_deliveries(
    settings: Settings, sample_repo: Path, small_disk: Path
) -> None:
    fill = f"head -c {2 * SIZE_MB}M /dev/zero > src/big.bin"
    with embedded_fleet(settings, 1) as celery, api_in_thread(settings, celery) as url:
        client = ApiClient(url, None)
        run = wait_terminal(client, [client.submit(_spec(sample_repo, fill))["id"]], timeout=60)[0]
    writes, after = run["phases"]
    assert run["state"] == "DONE_FAILED"
    assert writes["state"] == "FAILED" and after["state"] == "SKIPPED"
    assert "delivered 3 times without finishing; last: workspace disk unavailable" in writes["failure_reason"]
    assert "the phase's command reported a full disk" in writes["failure_reason"]  # head's own ENOSPC
    assert writes["attempt_log"] == [], "the disk's failures must not spend the phase's attempts"
    # What the phase wrote was discarded: the host is usable again.
    assert shutil.disk_usage(small_disk).free > (SIZE_MB - 4) * 2**20


def test_a_host_whose_disk_was_full_hands_the_phase_back_and_it_completes_once_space_is_freed(
    settings: Settings, sample_repo: Path, small_disk: Path
) -> None:
    (settings.workspace_dir).mkdir(parents=True)
    ballast = small_disk / "ballast"
    with ballast.open("wb") as fh:  # leave less than min_free_disk_mb
        fh.write(b"\0" * ((SIZE_MB - 2) * 2**20))
    with embedded_fleet(settings, 1) as celery, api_in_thread(settings, celery) as url:
        client = ApiClient(url, None)
        run_id = client.submit(_spec(sample_repo, "echo 1 > src/writes.py"))["id"]
        reason = _wait(lambda: client.run(run_id)["phases"][0]["failure_reason"], 30, "a hand-back")
        assert reason.startswith("workspace disk unavailable:") and "phase handed back" in reason
        ballast.unlink()
        run = wait_terminal(client, [run_id], timeout=60)[0]
    assert run["state"] == "DONE_SUCCESS"
    writes = run["phases"][0]
    assert [a["outcome"] for a in writes["attempt_log"]] == ["SUCCESS"]
    assert writes["failure_reason"] is None


def test_a_command_that_lost_a_write_to_a_full_disk_but_exited_0_commits_nothing(
    settings: Settings, sample_repo: Path, small_disk: Path
) -> None:
    # The disk fills and frees itself inside the command: `echo` fails with ENOSPC, the command still
    # exits 0 and leaves an empty file, and the disk is free again by the commit (a chaos batch saw a
    # phase COMPLETE this way, its file empty).
    fill = "for i in $(seq 20); do head -c 1M /dev/zero > src/fill$i.bin 2>/dev/null; done"
    command = f"{fill}; echo 'R = 1' > src/writes.py; rm -f src/fill*.bin"
    with embedded_fleet(settings, 1) as celery, api_in_thread(settings, celery) as url:
        client = ApiClient(url, None)
        run = wait_terminal(client, [client.submit(_spec(sample_repo, command))["id"]], timeout=60)[0]
    writes = run["phases"][0]
    assert writes["state"] == "FAILED", f"a write lost to ENOSPC was committed: {writes}"
    assert "command reported a full disk" in writes["failure_reason"]
    assert "No space left on device" in writes["failure_reason"]
    assert writes["attempt_log"] == [], "the disk's failures must not spend the phase's attempts"
