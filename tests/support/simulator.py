"""A local Anthropic Messages API for tests and benchmarks: a real HTTP server that answers from a script.

Never a product default. It speaks the wire format of `POST /v1/messages` (response JSON, `request-id`
header, the `{"type": "error", "error": {...}}` error body) so the real `anthropic` SDK talks to it over
real HTTP. Each request takes the next `Scripted` answer from a queue, or asks a router function
`(request_json) -> Scripted`. Every request received is recorded for assertions.

    with MessagesSimulator([Scripted.rate_limited(retry_after=2), Scripted(text="hi")]) as sim:
        client = LlmClient(api_key="test", base_url=sim.base_url, ...)
        ...
        assert sim.bodies[0]["model"] == "claude-haiku-4-5"
"""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal

JsonObject = dict[str, Any]
Router = Callable[[JsonObject], "Scripted"]
DropMode = Literal["close", "reset"]

FULL_USAGE: Mapping[str, int] = {
    "input_tokens": 120,
    "output_tokens": 30,
    "cache_creation_input_tokens": 0,
    "cache_read_input_tokens": 0,
}

ERROR_TYPES: Mapping[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


@dataclass(frozen=True)
class Scripted:
    """One answer. `status` 200 gives a message; any other status gives the real error body.

    `usage` is sent as given, so leaving out the cache fields tests that the client keeps them NULL.
    `delay` (seconds) is waited before answering; `drop` closes ("close") or resets ("reset") the
    connection after reading the request, without answering.
    """

    text: str = "ok"
    stop_reason: str = "end_turn"
    usage: Mapping[str, int] = field(default_factory=lambda: dict(FULL_USAGE))
    status: int = 200
    error_type: str | None = None
    error_message: str = "scripted error"
    retry_after: float | None = None
    delay: float = 0.0
    drop: DropMode | None = None
    model: str | None = None
    """Model named in the answer; None echoes the request's model."""
    request_id: str | None = None
    """`request-id` header; None makes one up (`req_sim_000001`, ...)."""
    tool_uses: tuple[tuple[str, Any], ...] = ()
    """(tool name, input) pairs sent as `tool_use` blocks after the text; any makes stop_reason `tool_use`."""

    @classmethod
    def tools(cls, *calls: tuple[str, Any], text: str = "", **kw: Any) -> Scripted:
        """An answer that asks for tool calls, e.g. `Scripted.tools(("grep", {"pattern": "def f"}))`."""
        return cls(text=text, stop_reason="tool_use", tool_uses=tuple(calls), **kw)

    @classmethod
    def rate_limited(cls, retry_after: float | None = 1.0) -> Scripted:
        return cls(status=429, retry_after=retry_after, error_message="Number of request tokens has exceeded")

    @classmethod
    def overloaded(cls) -> Scripted:
        return cls(status=529, error_message="Overloaded")

    @classmethod
    def server_error(cls, status: int = 500) -> Scripted:
        return cls(status=status, error_message="Internal server error")

    @classmethod
    def auth_error(cls) -> Scripted:
        return cls(status=401, error_message="invalid x-api-key")

    @classmethod
    def dropped(cls, mode: DropMode = "close") -> Scripted:
        return cls(drop=mode)


@dataclass(frozen=True)
class RecordedRequest:
    """What the simulator received, and the `request-id` it answered with (None if it dropped)."""

    path: str
    headers: Mapping[str, str]
    body: JsonObject
    answered: Scripted
    request_id: str | None
    at: float = field(default_factory=time.time)
    """Wall-clock time the request arrived (before any scripted delay)."""


def system_text(body: JsonObject) -> str:
    """The request's system prompt as one string (the API accepts a string or a list of text blocks)."""
    system = body.get("system", "")
    if isinstance(system, str):
        return system
    return "\n".join(block.get("text", "") for block in system if isinstance(block, dict))


def route_by_system(routes: Mapping[str, Iterable[Scripted]], default: Iterable[Scripted] = ()) -> Router:
    """A router: the first marker found in the system prompt picks that queue; else the default queue."""
    queues = {marker: deque(answers) for marker, answers in routes.items()}
    fallback = deque(default)
    lock = threading.Lock()

    def route(body: JsonObject) -> Scripted:
        system = system_text(body)
        queue = next((q for marker, q in queues.items() if marker in system), fallback)
        with lock:
            if not queue:
                return exhausted("no scripted answer left for this route")
            return queue.popleft()

    return route


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The API key a request carries: `x-api-key`, or `authorization: Bearer` (newer SDKs send that)."""
    bearer = headers.get("authorization", "")
    return headers.get("x-api-key") or (
        bearer.removeprefix("Bearer ") if bearer.startswith("Bearer ") else None
    )


def exhausted(reason: str) -> Scripted:
    """A 400 the client will not retry, so a test that asks more than its script fails loudly."""
    return Scripted(status=400, error_message=f"simulator: {reason}")


class MessagesSimulator:
    """`POST /v1/messages` on 127.0.0.1 and a free port, in a background thread, answering from `script`."""

    def __init__(
        self,
        script: Sequence[Scripted] | Router = (),
        *,
        default: Scripted | None = None,
        api_key: str | None = None,
        id_prefix: str = "",
    ) -> None:
        """`default` answers once a queue script is used up (else a 400 says so).

        `api_key`, when given, must arrive (as `x-api-key` or `authorization: Bearer`), else the answer is
        a 401 like the real API's. `id_prefix` goes into every `request-id` it makes up, so the ids of
        several simulators never collide.
        """
        self._router: Router | None = script if callable(script) else None
        self._queue: deque[Scripted] = deque() if callable(script) else deque(script)
        self._default = default
        self._api_key = api_key
        self._id_prefix = id_prefix
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._stopping = threading.Event()
        self.requests: list[RecordedRequest] = []
        self.sent: dict[str, float] = {}
        """Wall-clock time each 200 answer was written to its socket, by `request-id` (an answer whose
        client had gone is not in it)."""
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self._require_server().server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def bodies(self) -> list[JsonObject]:
        with self._lock:
            return [r.body for r in self.requests]

    def __enter__(self) -> MessagesSimulator:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        self._server = _Server(("127.0.0.1", 0), _Handler, self)
        self._thread = threading.Thread(target=self._serve, name="messages-sim", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self._require_server().serve_forever(poll_interval=0.02)  # quick stop() for fast tests

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def next_answer(self, headers: Mapping[str, str], body: JsonObject) -> Scripted:
        """The answer to one request: auth and shape checks first, then the router or the queue."""
        if self._api_key is not None and presented_key(headers) != self._api_key:
            return Scripted.auth_error()
        missing = [name for name in ("model", "max_tokens", "messages") if name not in body]
        if missing:
            return Scripted(status=400, error_message=f"{missing[0]}: Field required")
        if self._router is not None:
            return self._router(body)
        with self._lock:
            if self._queue:
                return self._queue.popleft()
        return self._default or exhausted("script exhausted")

    def new_request_id(self) -> str:
        return f"req_sim_{self._id_prefix}{next(self._ids):06d}"

    def record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def mark_sent(self, request_id: str) -> None:
        with self._lock:
            self.sent[request_id] = time.time()

    def wait(self, seconds: float) -> None:
        """Sleep for a scripted delay, but wake up when the simulator stops."""
        self._stopping.wait(seconds)

    def _require_server(self) -> _Server:
        if self._server is None:
            raise RuntimeError("MessagesSimulator is not started; use it as a context manager")
        return self._server


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], sim: MessagesSimulator
    ) -> None:
        super().__init__(address, handler)
        self.sim = sim


def tool_results(body: JsonObject) -> list[JsonObject]:
    """The `tool_result` blocks of a request's last user turn (what the client's tools answered)."""
    messages = body.get("messages") or [{}]
    content = messages[-1].get("content")
    return (
        [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"]
        if isinstance(content, list)
        else []
    )


def message_body(answer: Scripted, request: JsonObject, message_id: str) -> JsonObject:
    content: list[JsonObject] = (
        [{"type": "text", "text": answer.text}] if answer.text or not answer.tool_uses else []
    )
    content += [
        {"type": "tool_use", "id": f"toolu_{message_id}_{i}", "name": name, "input": tool_input}
        for i, (name, tool_input) in enumerate(answer.tool_uses)
    ]
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": answer.model or request.get("model", ""),
        "content": content,
        "stop_reason": answer.stop_reason,
        "stop_sequence": None,
        "usage": dict(answer.usage),
    }


def error_body(answer: Scripted, request_id: str) -> JsonObject:
    error_type = answer.error_type or ERROR_TYPES.get(answer.status, "api_error")
    return {
        "type": "error",
        "error": {"type": error_type, "message": answer.error_message},
        "request_id": request_id,
    }


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        body = self._read_json()
        headers = {k.lower(): v for k, v in self.headers.items()}
        if self.path.split("?")[0] != "/v1/messages":
            answer = Scripted(status=404, error_message=f"Not found: {self.path}")
        else:
            answer = self.server.sim.next_answer(headers, body)
        request_id = None if answer.drop else self.server.sim.new_request_id()
        request_id = answer.request_id or request_id
        self.server.sim.record(RecordedRequest(self.path, headers, body, answer, request_id))
        if answer.delay:
            self.server.sim.wait(answer.delay)
        if answer.drop:
            self._drop(answer.drop)
            return
        self._answer(answer, body, request_id or "")

    def _read_json(self) -> JsonObject:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            parsed = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            return {"_unparsed": raw.decode(errors="replace")}
        return parsed if isinstance(parsed, dict) else {"_unparsed": parsed}

    def _answer(self, answer: Scripted, request: JsonObject, request_id: str) -> None:
        if answer.status == 200:
            payload = message_body(answer, request, f"msg_sim_{request_id.removeprefix('req_sim_')}")
        else:
            payload = error_body(answer, request_id)
        data = json.dumps(payload).encode()
        try:
            self.send_response(answer.status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.send_header("request-id", request_id)
            if answer.retry_after is not None:
                self.send_header("retry-after", f"{answer.retry_after:g}")
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
            if answer.status == 200:
                self.server.sim.mark_sent(request_id)
        except OSError:
            self.close_connection = True  # the client gave up (its timeout); nothing to answer

    def _drop(self, mode: DropMode) -> None:
        self.close_connection = True
        if mode == "reset":  # SO_LINGER 0: close() sends RST instead of FIN
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            return
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the recorded requests are the log."""
