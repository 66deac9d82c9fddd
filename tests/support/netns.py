"""Test "hosts" as Linux network namespaces on this machine, and a TCP forwarder that lets them reach
the loopback-only Postgres and Redis.

Each host `apfD-hN` gets a veth pair: `apfD-hN-r` in the root namespace (10.S.N.1/30) and `apfD-hN-n`
inside the namespace (10.S.N.2/30), where D is the test session's Redis database (conftest
`session_redis`, unique per session on this machine) and S = 200 + D: two suites on one machine never
share a namespace name or a subnet. A process started with `ip netns exec apfD-hN …` sees only its own
loopback and that link, so it reaches Postgres and Redis through the forwarder listening on 10.S.N.1.
The filesystem is shared (same machine), so git repositories are still reached by path.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from shared.settings import Settings
from tests.conftest import SESSION_DB
from tests.support.procs import AUTOPACK, Proc, settings_env, spawn

PREFIX = f"apf{SESSION_DB}-h"
SUBNET = f"10.{200 + SESSION_DB}"


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def netns_unavailable() -> str | None:
    """Why network namespaces cannot be used here, or None when they can (probed for real)."""
    if shutil.which("ip") is None:
        return "iproute2 `ip` not found"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"apf-probe-{os.getpid()}"
    done = ip("netns", "add", probe, check=False)
    if done.returncode != 0:
        return f"`ip netns add` refused: {done.stderr.strip()}"
    ip("netns", "del", probe, check=False)
    return None


@dataclass(frozen=True)
class Host:
    """One network namespace with a veth link to the root namespace."""

    index: int

    @property
    def name(self) -> str:
        return f"{PREFIX}{self.index}"

    @property
    def root_ip(self) -> str:
        """The root-side address: what processes inside the namespace dial to reach this machine."""
        return f"{SUBNET}.{self.index}.1"

    @property
    def ns_ip(self) -> str:
        return f"{SUBNET}.{self.index}.2"

    @property
    def veth_root(self) -> str:
        return f"{self.name}-r"

    @property
    def veth_ns(self) -> str:
        return f"{self.name}-n"

    def command(self, args: list[str]) -> list[str]:
        """`args` run inside this namespace (`ip netns exec` execs in place: the pid stays the command's)."""
        return ["ip", "netns", "exec", self.name, *args]

    def pids(self) -> set[int]:
        """Every process currently in this namespace."""
        out = ip("netns", "pids", self.name, check=False).stdout
        return {int(p) for p in out.split()}


def create_host(host: Host) -> None:
    delete_host(host)  # a leftover of an interrupted run
    ip("netns", "add", host.name)
    ip("link", "add", host.veth_root, "type", "veth", "peer", "name", host.veth_ns)
    ip("link", "set", host.veth_ns, "netns", host.name)
    ip("addr", "add", f"{host.root_ip}/30", "dev", host.veth_root)
    ip("link", "set", host.veth_root, "up")
    ip("netns", "exec", host.name, "ip", "addr", "add", f"{host.ns_ip}/30", "dev", host.veth_ns)
    ip("netns", "exec", host.name, "ip", "link", "set", host.veth_ns, "up")
    ip("netns", "exec", host.name, "ip", "link", "set", "lo", "up")


def delete_host(host: Host) -> None:
    """Remove the namespace and the root end of its veth (deleting either end removes the pair)."""
    ip("netns", "del", host.name, check=False)
    ip("link", "del", host.veth_root, check=False)


@contextmanager
def netns_hosts(count: int) -> Iterator[list[Host]]:
    """`count` namespaces apfD-h1 … apfD-hN, always deleted afterwards."""
    hosts = [Host(i) for i in range(1, count + 1)]
    try:
        for host in hosts:
            create_host(host)
        yield hosts
    finally:
        for host in hosts:
            delete_host(host)


@dataclass
class Forwarder:
    """A threaded TCP forwarder: connections to (listen_host, listen_port) are piped to target."""

    listen_host: str
    listen_port: int
    target: tuple[str, int]
    connections: int = 0
    _server: socket.socket | None = None
    _open: set[socket.socket] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopped: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((self.listen_host, self.listen_port))
        server.listen(128)
        self._server = server
        threading.Thread(target=self._accept, name=f"fwd-{self.listen_port}", daemon=True).start()

    def _accept(self) -> None:
        assert self._server is not None
        while not self._stopped.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self.connections += 1
                self._open |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        self._stopped.set()
        if self._server is not None:
            with suppress(OSError):
                self._server.close()
        with self._lock:
            open_sockets, self._open = self._open, set()
        for sock in open_sockets:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


@contextmanager
def forwarding(listen_host: str, ports: dict[int, tuple[str, int]]) -> Iterator[dict[int, Forwarder]]:
    """Forwarders listening on `listen_host` at each port of `ports`; all stopped afterwards."""
    started: dict[int, Forwarder] = {}
    try:
        for port, target in ports.items():
            forwarder = Forwarder(listen_host, port, target)
            forwarder.start()
            started[port] = forwarder
        yield started
    finally:
        for forwarder in started.values():
            forwarder.stop()


def readdress(url: str, host: str) -> str:
    """`url` with its 127.0.0.1 / localhost replaced by `host`."""
    for local in ("127.0.0.1", "localhost"):
        if f"@{local}:" in url or f"//{local}:" in url:
            return url.replace(local, host, 1)
    raise ValueError(f"{url} does not point at this machine's loopback")


def host_settings(settings: Settings, host: Host, workspace: Path) -> Settings:
    """`settings` as seen from inside `host`: services via the forwarder, a workspace of its own."""
    return settings.model_copy(
        update={
            "database_url": readdress(settings.database_url, host.root_ip),
            "broker_url": readdress(settings.broker_url, host.root_ip),
            "workspace_dir": workspace,
        }
    )


def start_worker(settings: Settings, host: Host, logdir: Path, concurrency: int = 2) -> Proc:
    """Spawn a real `autopack worker` inside `host`'s namespace (not yet waited for: see `wait_ready`)."""
    env = settings_env(settings, AUTOPACK_LOG_LEVEL="INFO")  # readiness is read from the INFO log
    args = host.command(
        [AUTOPACK, "worker", "--hostname", f"{host.name}@%h", "--concurrency", str(concurrency)]
    )
    return spawn(args, env, logdir / f"{host.name}.log")


def wait_ready(procs: dict[str, Proc], timeout: float = 60) -> None:
    """Wait until every worker logs `ready.`; raise with a log tail if one exits or the time runs out."""
    deadline = time.monotonic() + timeout
    waiting = dict(procs)
    while waiting:
        for name, proc in list(waiting.items()):
            if "ready." in proc.output():
                del waiting[name]
            elif proc.popen.poll() is not None:
                raise RuntimeError(f"worker in {name} exited:\n{proc.output()[-4000:]}")
        if waiting and time.monotonic() > deadline:
            name, proc = next(iter(waiting.items()))
            raise RuntimeError(f"worker in {name} not ready after {timeout}s:\n{proc.output()[-4000:]}")
        time.sleep(0.1)


@contextmanager
def netns_fleet(
    settings: Settings, count: int, workdir: Path, logdir: Path, concurrency: int = 2, wait: bool = True
) -> Iterator[list[tuple[Host, Proc, dict[int, Forwarder]]]]:
    """`count` namespaced hosts, each with forwarders to Postgres and Redis and one worker.

    The workers start in parallel; with `wait=False` the caller does other start-up meanwhile and calls
    `wait_ready` itself.
    """
    db_port = int(settings.database_url.rsplit(":", 1)[1].split("/", 1)[0])
    broker_port = int(settings.broker_url.rsplit(":", 1)[1].split("/", 1)[0])
    ports = {db_port: ("127.0.0.1", db_port), broker_port: ("127.0.0.1", broker_port)}
    with netns_hosts(count) as hosts, ExitStack() as stack:
        members = []
        for host in hosts:
            forwarders = stack.enter_context(forwarding(host.root_ip, ports))
            inner = host_settings(settings, host, workdir / host.name)
            worker = start_worker(inner, host, logdir, concurrency)
            stack.callback(worker.stop)
            members.append((host, worker, forwarders))
        if wait:
            wait_ready({host.name: worker for host, worker, _ in members})
        yield members
