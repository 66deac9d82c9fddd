"""What every `autopack` client command shares: an API client built from the settings, and how an
error ends the command (one line on stderr, exit status 1; never a traceback)."""

from __future__ import annotations

import sys
from typing import NoReturn

import click

from api.client import ApiClient
from shared.settings import Settings, get_settings


def settings_client(settings: Settings | None = None) -> ApiClient:
    """A client for `AUTOPACK_API_URL` with `AUTOPACK_API_KEY` (none in embedded mode)."""
    settings = settings or get_settings()
    key = settings.api_key.get_secret_value() if settings.api_key else None
    return ApiClient(settings.api_url, key)


def fail(exc: Exception) -> NoReturn:
    click.echo(f"error: {exc}", err=True)
    sys.exit(1)
