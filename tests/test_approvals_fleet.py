"""Approvals in the fleet: an `autopack api` process, real `autopack worker` processes, Postgres, Redis,
real git repositories, the LLM simulator, and a webhook receiver in this test.

One scenario on purpose (each worker start costs seconds): a paused phase frees the only worker slot
(another run completes meanwhile), the notification is retried after a 500 and its signature checks out,
an unanswered approval times out to its default action, a rejection's reason reaches the next prompt,
approval resumes the kept change on another worker, and two concurrent decisions make exactly one."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import select

from api.client import ApiClient
from api.serve import free_port
from shared.db import transaction
from shared.keys import create_key
from shared.models import Approval, WebhookDelivery
from shared.settings import Settings
from tests.support.procs import api_process, worker_process
from tests.support.scenario import wait_terminal
from tests.support.simulator import MessagesSimulator, Scripted

pytestmark = pytest.mark.fleet

SECRET = "whsec-test"
ASK = [{"pattern": "infra/**", "tier": "high", "policy": "ask"}]
WRITE_INFRA = "mkdir -p infra && echo 'region = 1' > infra/main.tf"
NO = "REVIEWER-SAYS-NO: keep infra/e.tf empty"


class Hook:
    """A webhook receiver whose first answer is a 500; it records every request."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes, int]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = 500 if not hook.received else 200
                hook.received.append((dict(self.headers), body, status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"


@contextmanager
def webhook() -> Iterator[Hook]:
    hook = Hook()
    thread = threading.Thread(target=hook.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hook
    finally:
        hook.server.shutdown()


def script_run(repo: Path, name: str, command: str, **config: Any) -> dict[str, Any]:
    phase = {
        "name": name,
        "scope": ["infra/", "src/"],
        "command": command,
        "validation": ["test -f src/calc.py"],
    }
    return {"repo": str(repo), "config": {"doctor": False, **config}, "phases": [phase]}


def pending(client: ApiClient, run_id: int, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        items = client._call("GET", "/approvals", params={"state": "pending"})["items"]
        mine = [a for a in items if a["run_id"] == run_id]
        if mine:
            return dict(client._call("GET", f"/approvals/{mine[0]['id']}"))
        time.sleep(0.1)
    raise AssertionError(f"run {run_id}: no pending approval after {timeout}s: {client.run(run_id)}")


def settings_for(base: Settings, sim: MessagesSimulator, hook: Hook) -> Settings:
    return base.model_copy(
        update={
            "anthropic_api_key": SecretStr("sk-approvals"),
            "anthropic_base_url": sim.base_url,
            "approval_webhook_url": hook.url,
            "approval_webhook_secret": SecretStr(SECRET),
            "approval_webhook_backoff_seconds": 0.2,
        }
    )


def test_paused_phases_free_their_worker_and_resume_reject_or_time_out_as_decided(
    fleet_settings: Settings, sample_repo: Path, tmp_path: Path
) -> None:
    answers = [Scripted(text=f"<<<FILE infra/e.tf\nv{i}\nFILE>>>\n") for i in (1, 2)]
    with MessagesSimulator(answers) as sim, webhook() as hook, ExitStack() as stack:
        settings = settings_for(fleet_settings, sim, hook)
        with transaction(settings.database_url) as session:
            _, key = create_key(session, "approvals", admin=True)
        host = {
            n: worker_process(settings, n, tmp_path, concurrency=1, workspace=tmp_path / n)
            for n in ("w1", "w2")
        }
        url, w1 = start(stack, api_process(settings, free_port(), tmp_path), host["w1"])
        client = ApiClient(url, key)
        a, d, e_id = _one_slot(client, sample_repo)
        # (a) is shown: the second host may start now, while the first goes on with run E.
        (e,) = start(stack, host["w2"], during=lambda: _rejected_then_asked_again(client, sim, a, e_id))
        w1.stop()
        _second_host(client, url, key, a, e)
        runs = {r["id"]: r for r in wait_terminal(client, [a["run_id"], e["run_id"], d], timeout=60)}
    _check_resumed_elsewhere(settings, runs[a["run_id"]], a)
    _check_timed_out(runs[d])
    _check_webhook(settings, hook)


def start(
    stack: ExitStack, *managers: AbstractContextManager[Any], during: Callable[[], Any] | None = None
) -> list[Any]:
    """Enter the managers at once (each waits seconds for its process), `during` meanwhile; what
    started is left on `stack` to stop, even when something failed. Returns their values (and
    `during`'s instead, when given)."""
    with ThreadPoolExecutor(len(managers)) as pool:
        futures = [pool.submit(m.__enter__) for m in managers]
        try:
            done = during() if during is not None else None
        finally:
            for manager, future in zip(managers, futures, strict=True):
                if future.exception() is None:
                    stack.push(manager)
    values = [f.result() for f in futures]
    return [done] if during is not None else values


def _one_slot(client: ApiClient, repo: Path) -> tuple[dict[str, Any], int, int]:
    """On the only worker (one slot): A pauses; B then runs to the end while A waits. D (to time out)
    and E (to be rejected) are queued behind B."""
    a = pending(client, client.submit(script_run(repo, "infra", WRITE_INFRA, approval_rules=ASK))["id"])
    assert (a["paths"], a["phase_index"], a["attempt"]) == (
        [{"path": "infra/main.tf", "pattern": "infra/**", "tier": "high", "policy": "ask"}],
        0,
        1,
    )
    assert "+region = 1" in a["diff"]
    b = client.submit(script_run(repo, "calc", "echo '# b' >> src/calc.py"))["id"]
    timeout = {"approval_rules": ASK, "max_attempts": 1, "approval_timeout_seconds": 1}
    d = client.submit(script_run(repo, "late", WRITE_INFRA, **timeout))["id"]
    spec = script_run(repo, "llm", "unused", builder="anthropic", approval_rules=ASK, max_attempts=2)
    del spec["phases"][0]["command"]
    e_id = client.submit(spec)["id"]
    assert wait_terminal(client, [b], timeout=30)[0]["state"] == "DONE_SUCCESS"
    assert client.run(a["run_id"])["phases"][0]["state"] == "AWAITING_APPROVAL"  # (a): B ran meanwhile
    return a, d, e_id


def _rejected_then_asked_again(
    client: ApiClient, sim: MessagesSimulator, a: dict[str, Any], e_id: int
) -> dict[str, Any]:
    """E's first change is rejected; its second attempt's prompt carries the reviewer's reason."""
    first = pending(client, e_id)
    rejected = client._call("POST", f"/approvals/{first['id']}/reject", json={"reason": NO})
    assert rejected["state"] == "rejected"
    second = pending(client, e_id)
    assert second["attempt"] == 2 and "+v2" in second["diff"]
    assert NO in json.dumps(sim.bodies[1]) and NO not in json.dumps(sim.bodies[0])
    fleet = client.fleet()
    assert not [r for r in fleet["stuck"] if r["run_id"] in (a["run_id"], e_id)], fleet["stuck"]
    return second


def _second_host(client: ApiClient, url: str, key: str, a: dict[str, Any], e: dict[str, Any]) -> None:
    """With the first worker gone: approve A, and race an approve against a reject on E."""
    assert client._call("POST", f"/approvals/{a['id']}/approve", json={})["state"] == "approved"
    codes: dict[str, int] = {}

    def decide(verb: str) -> None:
        body = {"reason": f"{verb} in a race"}
        codes[verb] = httpx.post(
            f"{url}/approvals/{e['id']}/{verb}", json=body, headers={"X-API-Key": key}
        ).status_code

    threads = [threading.Thread(target=decide, args=(verb,)) for verb in ("approve", "reject")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes.values()) == [200, 409], codes
    winner = next(verb for verb, code in codes.items() if code == 200)
    stored = client._call("GET", f"/approvals/{e['id']}")
    assert (stored["state"], stored["reason"]) == (
        {"approve": "approved", "reject": "rejected"}[winner],
        f"{winner} in a race",
    )
    final = wait_terminal(client, [e["run_id"]], timeout=40)[0]
    assert final["state"] == ("DONE_SUCCESS" if winner == "approve" else "DONE_FAILED"), final


def _check_resumed_elsewhere(settings: Settings, run: dict[str, Any], a: dict[str, Any]) -> None:
    assert run["state"] == "DONE_SUCCESS", run
    (attempt,) = run["phases"][0]["attempt_log"]
    assert attempt["outcome"] == "SUCCESS" and attempt["commit_sha"] == a["commit_sha"]
    with transaction(settings.database_url) as session:
        requested_by = session.scalar(select(Approval.requested_by).where(Approval.id == a["id"]))
    assert requested_by is not None
    assert attempt["worker"].rsplit("/", 1)[0] != requested_by.rsplit("/", 1)[0]  # another process


def _check_timed_out(run: dict[str, Any]) -> None:
    assert run["state"] == "DONE_FAILED", run
    (attempt,) = run["phases"][0]["attempt_log"]
    assert attempt["outcome"] == "REJECTED"
    assert "rejected by timeout" in attempt["failure_reason"]
    assert "default action (reject)" in attempt["failure_reason"]


def _check_webhook(settings: Settings, hook: Hook) -> None:
    headers, body, status = hook.received[0]
    assert status == 500
    retried = [r for r in hook.received[1:] if r[1] == body]
    assert retried and retried[0][2] == 200  # the same bytes again, after the backoff
    for headers, body, _ in hook.received:
        mac = hmac.new(
            SECRET.encode(), headers["X-Autopack-Timestamp"].encode() + b"." + body, hashlib.sha256
        )
        assert headers["X-Autopack-Signature"] == "sha256=" + mac.hexdigest()
    sent = json.loads(body)
    assert sent["url"].endswith(f"/approvals/{sent['approval_id']}") and sent["paths"][0]["tier"] == "high"
    with transaction(settings.database_url) as session:
        rows = session.scalars(select(WebhookDelivery)).all()
        assert all(r.delivered_at is not None for r in rows)
        assert sorted(r.tries for r in rows)[-1] == 2
