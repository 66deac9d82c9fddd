"""Running the API: in the foreground (`autopack api`) or in a thread (the demo, tests)."""

from __future__ import annotations

import ipaddress
import logging
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import uvicorn
from celery import Celery
from fastapi import FastAPI

from api.app import create_app
from shared.db import upgrade
from shared.errors import DatabaseNotMigrated, ServiceUnavailable
from shared.settings import Settings, get_settings
from workers.celery_app import create_app as create_celery
from workers.embedded import embedded_fleet


def serve(settings: Settings, host: str | None, port: int | None) -> None:
    host = host or settings.api_host
    refuse_open_access(settings, host)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.is_embedded:
        upgrade(settings.database_url)  # a laptop's SQLite file: nothing to coordinate, migrate in place
    fleet = embedded_fleet(settings) if settings.is_embedded else nullcontext(create_celery(settings))
    with fleet as celery:
        try:
            app = create_app(settings, celery)  # also the check, before any process is started
        except (DatabaseNotMigrated, ServiceUnavailable) as exc:
            print(f"autopack api: {exc}", file=sys.stderr)
            sys.exit(2)
        port = port or settings.api_port
        if settings.api_workers > 1 and not settings.is_embedded:
            # Each process builds its own app from the same settings (the environment).
            uvicorn.run(
                f"{__name__}:fleet_app", factory=True, host=host, port=port, workers=settings.api_workers
            )
        else:
            uvicorn.run(app, host=host, port=port, log_level="info")


def fleet_app() -> FastAPI:
    """The API of one of `api_workers` processes (uvicorn imports this by name)."""
    settings = get_settings()
    return create_app(settings, create_celery(settings))


def refuse_open_access(settings: Settings, host: str) -> None:
    """Exit unless keys are required or only this machine can connect: whoever reaches the API can
    submit runs, and runs execute commands."""
    if settings.needs_api_key or is_loopback(host):
        return
    print(
        f"autopack api: refusing to serve without authentication on {host}: anyone who can reach it could "
        "run commands on the workers. Either set AUTOPACK_AUTH_REQUIRED=true (and create a key with "
        "`autopack keys create NAME`), or bind to loopback "
        "(AUTOPACK_API_HOST=127.0.0.1 or --host 127.0.0.1).",
        file=sys.stderr,
    )
    sys.exit(2)


def is_loopback(host: str) -> bool:
    """True only for addresses that cannot be reached from another machine (0.0.0.0 and names are not)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def api_in_thread(settings: Settings, celery: Celery, port: int | None = None) -> Iterator[str]:
    """Serve the API on loopback from a thread; yield its base URL."""
    port = port or free_port()
    config = uvicorn.Config(create_app(settings, celery), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="autopack-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the API did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
