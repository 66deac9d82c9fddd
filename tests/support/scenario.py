"""The end-to-end scenario both modes must pass: many runs of three scripted phases, checked hard."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from api.client import ApiClient
from api.sample_repo import sample_spec

TERMINAL = {"DONE_SUCCESS", "DONE_FAILED", "CANCELLED"}


def submit_runs(client: ApiClient, repo: Path, n: int) -> list[int]:
    return [client.submit(sample_spec(repo, i, sys.executable))["id"] for i in range(n)]


def wait_terminal(client: ApiClient, ids: list[int], timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        runs = [client.run(i) for i in ids]
        if all(r["state"] in TERMINAL for r in runs):
            return runs
        if time.monotonic() > deadline:
            states = {r["id"]: (r["state"], [p["state"] for p in r["phases"]]) for r in runs}
            raise AssertionError(f"runs not terminal after {timeout}s: {states}")
        time.sleep(0.2)


def branch_subjects(repo: Path, run: dict[str, Any]) -> list[str]:
    out = subprocess.run(
        [
            "git",
            "-C",
            str(repo),
            "log",
            "--reverse",
            "--format=%s",
            f"{run['base_sha']}..{run['result_branch']}",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out.splitlines()


def intervals(run: dict[str, Any]) -> list[tuple[datetime, datetime]]:
    return [
        (datetime.fromisoformat(p["started_at"]), datetime.fromisoformat(p["finished_at"]))
        for p in run["phases"]
    ]


def overlaps(a: tuple[datetime, datetime], b: tuple[datetime, datetime]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def check_scenario(repo: Path, runs: list[dict[str, Any]]) -> None:
    """Every run succeeded with one commit per phase in order; runs were parallel, phases were not."""
    assert [r["state"] for r in runs] == ["DONE_SUCCESS"] * len(runs), [r.get("failure_reason") for r in runs]
    for run in runs:
        subjects = branch_subjects(repo, run)
        expected = [f"autopack: run {run['id']} phase {p['index']} {p['name']}" for p in run["phases"]]
        assert subjects == expected
        assert [p["commit_sha"] for p in run["phases"]][-1] == run["head_sha"]
        spans = intervals(run)
        assert not any(overlaps(a, b) for a, b in itertools.combinations(spans, 2)), (
            f"run {run['id']} overlapped"
        )
    across = [
        overlaps(a, b)
        for r1, r2 in itertools.combinations(runs, 2)
        for a in intervals(r1)
        for b in intervals(r2)
    ]
    assert any(across), "no two runs ever executed at the same time"
