"""`autopack flower` for real: a Flower process on the fleet's Redis, two `autopack worker` processes
and an `autopack api` process; Flower's HTTP API (behind basic auth) shows both workers and every
phase task with its run and phase ids."""

from __future__ import annotations

import ast
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from celery import Celery
from pydantic import SecretStr

from api.client import ApiClient
from api.flower_cli import flower_argv, refusal
from api.serve import free_port
from shared.db import transaction
from shared.keys import create_key
from shared.settings import Settings
from tests.support.procs import AUTOPACK, api_process, flower_process, settings_env, worker_process
from tests.support.scenario import submit_runs, wait_terminal
from workers.celery_app import PHASE_TASK, CeleryDispatcher, queue_keys
from workers.celery_app import create_app as create_celery

pytestmark = pytest.mark.fleet

USER, PASSWORD = "ops", "flower-pw-7f3a"


def flower_tasks(base: str, auth: tuple[str, str]) -> dict[str, dict[str, Any]]:
    resp = httpx.get(f"{base}/api/tasks", params={"taskname": PHASE_TASK}, auth=auth, timeout=10)
    assert resp.status_code == 200, resp.text
    tasks: dict[str, dict[str, Any]] = resp.json()
    return tasks


def phase_ids_done(tasks: dict[str, dict[str, Any]]) -> set[tuple[int, int]]:
    """(run id, phase id) of each SUCCESS phase task; Flower keeps args as the repr the worker sent."""
    return {tuple(ast.literal_eval(t["args"])) for t in tasks.values() if t["state"] == "SUCCESS"}  # type: ignore[misc]


def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not seen within {timeout}s")
        time.sleep(0.3)


def test_flower_shows_both_workers_and_every_phase_task_with_its_run_and_phase_ids(
    fleet_settings: Settings, sample_repo: Path, tmp_path: Path
) -> None:
    settings = fleet_settings.model_copy(update={"flower_basic_auth": SecretStr(f"{USER}:{PASSWORD}")})
    with transaction(settings.database_url) as session:
        _, key = create_key(session, "flower-test")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with (
        flower_process(settings, port, tmp_path) as flower,
        api_process(settings, free_port(), tmp_path) as url,
        worker_process(settings, "w1", tmp_path, workspace=tmp_path / "host1"),
        worker_process(settings, "w2", tmp_path, workspace=tmp_path / "host2"),
    ):
        # Without credentials, or with a wrong password, Flower's API and UI refuse.
        assert httpx.get(f"{base}/api/workers", timeout=10).status_code == 401
        assert httpx.get(f"{base}/api/workers", auth=(USER, "wrong"), timeout=10).status_code == 401
        assert httpx.get(f"{base}/", timeout=10).status_code == 401

        client = ApiClient(url, key)
        runs = wait_terminal(client, submit_runs(client, sample_repo, 2), timeout=120)
        assert [r["state"] for r in runs] == ["DONE_SUCCESS"] * 2
        expected = {(r["id"], p["id"]) for r in runs for p in r["phases"]}
        assert len(expected) == 6

        auth = (USER, PASSWORD)
        # Task events reach Flower asynchronously: wait until every phase's success has arrived.
        wait_for(lambda: phase_ids_done(flower_tasks(base, auth)) >= expected, 20, "every phase's SUCCESS")
        tasks = flower_tasks(base, auth)
        assert phase_ids_done(tasks) == expected
        assert {t["name"] for t in tasks.values()} == {PHASE_TASK}

        resp = httpx.get(f"{base}/api/workers", params={"refresh": "1"}, auth=auth, timeout=20)
        assert resp.status_code == 200, resp.text
        workers = set(resp.json())
        assert {w.split("@")[0] for w in workers} == {"w1", "w2"}, workers
        # Each SUCCESS event names the node that ran it: one of the two workers.
        assert {t["worker"] for t in tasks.values() if t["state"] == "SUCCESS"} <= workers
        log = flower.output()
    assert PASSWORD not in log, "Flower logged its password"


def test_autopack_flower_without_credentials_exits_2_and_says_how_to_fix_it(fleet_settings: Settings) -> None:
    out = subprocess.run(
        [AUTOPACK, "flower", "--port", str(free_port())],
        env=settings_env(fleet_settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, out
    assert "AUTOPACK_FLOWER_BASIC_AUTH=user:password" in out.stderr


def test_autopack_flower_refuses_the_embedded_broker(fleet_settings: Settings) -> None:
    settings = fleet_settings.model_copy(
        update={"broker_url": "memory://", "flower_basic_auth": SecretStr(f"{USER}:{PASSWORD}")}
    )
    out = subprocess.run(
        [AUTOPACK, "flower"], env=settings_env(settings), capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2, out
    assert "AUTOPACK_BROKER_URL" in out.stderr and PASSWORD not in out.stderr + out.stdout


@pytest.mark.parametrize("credential", ["", "  ", "zzuser", ":zzpw", "zzuser:", "zzuser:zzpw,zzsecond"])
def test_a_missing_or_malformed_credential_is_refused_without_quoting_it(
    fleet_settings: Settings, credential: str
) -> None:
    settings = fleet_settings.model_copy(update={"flower_basic_auth": SecretStr(credential)})
    reason = refusal(settings)
    assert reason is not None and "AUTOPACK_FLOWER_BASIC_AUTH" in reason
    assert "zz" not in reason


def test_flower_gets_the_credential_bind_address_and_url_prefix_as_options(fleet_settings: Settings) -> None:
    settings = fleet_settings.model_copy(update={"flower_basic_auth": SecretStr("a:1, b:2")})
    assert refusal(settings) is None
    argv = flower_argv(settings, 5566, "0.0.0.0", "/flower/")
    assert argv[0] == "flower"
    assert {"--port=5566", "--address=0.0.0.0", "--basic_auth=a:1,b:2", "--url_prefix=flower"} <= set(argv)
    assert not any(a.startswith("--url_prefix") for a in flower_argv(settings, 5566, "127.0.0.1", None))


def events_around(settings: Settings, phases: list[tuple[int, int]]) -> tuple[list[dict[str, Any]], set[Any]]:
    """Every Celery event published while `phases` are enqueued through the dispatcher, between a marker
    event the receiver has seen (it is subscribed) and one sent after them (every earlier publish has
    arrived), and what then waits in the queue. A queue of this test's own, emptied afterwards."""
    settings = settings.model_copy(update={"queue_name": f"sent-events-{time.monotonic_ns()}"})
    app = create_celery(settings)
    seen: list[dict[str, Any]] = []
    with app.connection_for_read() as conn:
        receiver = app.events.Receiver(conn, handlers={"*": seen.append})
        thread = threading.Thread(
            target=receiver.capture, kwargs={"limit": None, "timeout": 30, "wakeup": False}
        )
        thread.start()
        try:
            # Redis fanout is pub/sub: an event published before the subscription is lost, not queued.
            until_seen(app, seen, "autopack-ready")
            del seen[:]
            dispatcher = CeleryDispatcher(app)
            for run_id, phase_id in phases:
                dispatcher.enqueue(run_id, phase_id)
            until_seen(app, seen, "autopack-after")
            waiting = dispatcher.waiting()
        finally:
            receiver.should_stop = True
            thread.join(timeout=10)
            redis.Redis.from_url(settings.broker_url).delete(*queue_keys(settings.queue_name))
    return seen, set(waiting or ())


def until_seen(app: Celery, seen: list[dict[str, Any]], kind: str) -> None:
    def sent_and_seen() -> bool:
        with app.events.default_dispatcher() as dispatcher:
            dispatcher.send(kind)
        time.sleep(0.05)
        return any(event["type"] == kind for event in seen)

    wait_for(sent_and_seen, 10, f"the {kind} event")


def test_queued_tasks_send_no_task_sent_event_unless_flower_asks_for_them(fleet_settings: Settings) -> None:
    phases = [(900_001, 900_011), (900_002, 900_012), (900_003, 900_013)]
    quiet, waiting = events_around(fleet_settings, phases)
    assert waiting == set(phases)  # the tasks were published...
    assert not [e for e in quiet if e["type"] == "task-sent"]  # ...without their second publish

    loud, waiting = events_around(fleet_settings.model_copy(update={"flower_sent_events": True}), phases)
    assert waiting == set(phases)
    sent = [e for e in loud if e["type"] == "task-sent"]
    assert sorted(ast.literal_eval(e["args"]) for e in sent) == [list(p) for p in phases]
    assert {e["name"] for e in sent} == {PHASE_TASK}
