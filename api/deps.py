"""FastAPI dependencies: settings, a database session per request, the dispatcher, and auth."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.security import APIKeyHeader
from sqlalchemy.orm import Session

from shared.db import session_factory
from shared.dispatch import Dispatcher
from shared.keys import Caller, verify_key
from shared.settings import Settings


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_session(settings: SettingsDep) -> Iterator[Session]:
    with session_factory(settings.database_url)() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def get_dispatcher(request: Request) -> Dispatcher:
    dispatcher: Dispatcher = request.app.state.dispatcher
    return dispatcher


DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]

_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)


def require_key(
    settings: SettingsDep, session: SessionDep, key: Annotated[str | None, Security(_key_header)]
) -> Caller:
    """Who the request acts for. Looked up on every request, so a revoked key is refused at once."""
    if not settings.needs_api_key:
        return Caller.anonymous()
    row = verify_key(session, key)
    if row is None:
        detail = "missing X-API-Key header" if not key else "invalid API key"
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "APIKey"})
    return Caller.of(row)


Authed = Depends(require_key)
CallerDep = Annotated[Caller, Depends(require_key)]


def require_admin(caller: CallerDep) -> Caller:
    if not caller.admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this route needs an admin key")
    return caller


AdminOnly = Depends(require_admin)
