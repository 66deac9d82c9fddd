"""`autopack flower`: Flower on the fleet's broker and Celery app, behind basic auth.

Flower runs in this process through Celery's own command line (`app.start(["flower", …])`, exactly
what `celery --app workers.celery_app:app flower` runs) rather than by exec'ing `celery … flower
--basic-auth=user:password`, because:

- the credential never reaches an argv: a child's command line is readable by every local user
  (`ps`, /proc/PID/cmdline); here it stays in this process's memory;
- Flower gets the very app `workers.celery_app.create_app(settings)` builds (broker URL, priority
  queues, transport options) from the one `Settings` object, not a second app re-read from the
  environment by another import path;
- it is still Flower's supported entry point (its `celery.commands` plugin), not its internals.

Options given here override any `FLOWER_*` variable Flower itself would read.
"""

from __future__ import annotations

import logging

from shared.settings import Settings

AUTH_HELP = (
    "set AUTOPACK_FLOWER_BASIC_AUTH=user:password (several users: user1:pw1,user2:pw2) in the environment "
    "or .env; Flower shows every task's arguments and can revoke tasks, so it never runs without a login"
)


def refusal(settings: Settings) -> str | None:
    """Why `autopack flower` must not start with these settings, or None. Never quotes the password."""
    if settings.is_embedded:
        return (
            "Flower cannot see the embedded fleet: its workers live inside `autopack api` on the in-process "
            "broker (memory://). Set AUTOPACK_BROKER_URL to the fleet's Redis (redis://host:6379/0)."
        )
    if settings.flower_basic_auth is None or not settings.flower_basic_auth.get_secret_value().strip():
        return f"no Flower credentials: {AUTH_HELP}"
    bad = [n for n, pair in enumerate(_pairs(settings), 1) if not _valid_pair(pair)]
    if bad:
        return f"AUTOPACK_FLOWER_BASIC_AUTH entry {bad[0]} is not user:password (both non-empty): {AUTH_HELP}"
    return None


def _pairs(settings: Settings) -> list[str]:
    assert settings.flower_basic_auth is not None
    return [p.strip() for p in settings.flower_basic_auth.get_secret_value().split(",")]


def _valid_pair(pair: str) -> bool:
    user, sep, password = pair.partition(":")
    return bool(sep and user and password)


def flower_argv(settings: Settings, port: int, address: str, url_prefix: str | None) -> list[str]:
    """Celery's argv for Flower. Holds the credential: never log or print it."""
    argv = [
        "flower",
        f"--port={port}",
        f"--address={address}",
        f"--basic_auth={','.join(_pairs(settings))}",
        # Flower also asks workers to send events; ours already do (worker_send_task_events).
        "--enable_events=true",
        f"--logging={settings.log_level.lower()}",
    ]
    if url_prefix:
        argv.append(f"--url_prefix={url_prefix.strip('/')}")
    return argv


def run_flower(settings: Settings, port: int, address: str, url_prefix: str | None) -> int:
    """Serve Flower until SIGTERM; returns Celery's exit code. Call `refusal` first."""
    from workers.celery_app import create_app

    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings)
    code = app.start(flower_argv(settings, port, address, url_prefix))
    return int(code or 0)
