"""FastAPI dependencies: settings, a database session per request, the dispatcher, and auth."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.concurrency import run_in_threadpool
from fastapi.security import APIKeyHeader
from sqlalchemy.orm import Session

from shared.db import session_factory
from shared.dispatch import Dispatcher
from shared.keys import Caller, VerifiedKeys, verify_key
from shared.settings import Settings


# Async although nothing here awaits: FastAPI runs a sync dependency in its threadpool, a thread hop
# per request for reading an attribute.
async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


# Dependencies read the app's state from `request` rather than through `SettingsDep`: FastAPI solves
# every node of a route's dependency tree on every request (each with a cache-key walk), and sharing
# `get_settings` under the session and the key check made `POST /runs`'s tree 14 nodes instead of 7.
async def get_session(request: Request) -> AsyncIterator[Session]:
    """A session per request. Making one does no I/O, so it is made on the event loop; closing one
    still in a transaction is a ROLLBACK round trip, so that close goes to the threadpool."""
    session = session_factory(request.app.state.settings.database_url)()
    try:
        yield session
    finally:
        if session.in_transaction():
            await run_in_threadpool(session.close)
        else:
            session.close()


SessionDep = Annotated[Session, Depends(get_session)]


async def get_dispatcher(request: Request) -> Dispatcher:
    dispatcher: Dispatcher = request.app.state.dispatcher
    return dispatcher


DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]

_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)


async def require_key(request: Request, key: Annotated[str | None, Security(_key_header)]) -> Caller:
    """Who the request acts for. A key verified less than `api_key_cache_seconds` ago is trusted
    without a lookup (on the event loop); otherwise it is looked up (in the threadpool, in a session
    of its own), so a revoked key is refused within that long."""
    settings: Settings = request.app.state.settings
    if not settings.needs_api_key:
        return Caller.anonymous()
    verified: VerifiedKeys = request.app.state.verified_keys
    if key and (caller := verified.get(key)) is not None:
        return caller
    found = await run_in_threadpool(_look_up, settings.database_url, key) if key else None
    if key is None or found is None:
        detail = "missing X-API-Key header" if not key else "invalid API key"
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "APIKey"})
    verified.put(key, found)
    return found


def _look_up(database_url: str, key: str) -> Caller | None:
    with session_factory(database_url)() as session:
        row = verify_key(session, key)
        return None if row is None else Caller.of(row)


Authed = Depends(require_key)
CallerDep = Annotated[Caller, Depends(require_key)]


def require_admin(caller: CallerDep) -> Caller:
    if not caller.admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this route needs an admin key")
    return caller


AdminOnly = Depends(require_admin)
