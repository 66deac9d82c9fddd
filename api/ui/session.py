"""Dashboard sessions: a signed, HttpOnly, SameSite=Strict cookie naming the API key that logged in.

The cookie holds the key's row id (never the key) and a CSRF token, signed with itsdangerous and
time-limited. Every request looks the key up again, so a revoked key ends its sessions at once and
the same ownership rules as the API apply. Every POST must carry the session's CSRF token in a form
field; SameSite=Strict already keeps other sites' forms from sending the cookie, the token is the
second lock. Without auth (embedded) there is no login, but POSTs still need the token.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Form, HTTPException, Request, status
from itsdangerous import BadSignature, URLSafeTimedSerializer

from api.deps import SessionDep, SettingsDep
from shared.keys import Caller
from shared.models import ApiKey
from shared.settings import Settings

COOKIE = "autopack_session"
LOGIN_COOKIE = "autopack_login"
"""Carries the login form's CSRF token before any session exists."""


@dataclass(frozen=True)
class UiSession:
    caller: Caller
    csrf: str
    key_name: str | None


class LoginRequired(Exception):
    """No valid session: the page answers with a redirect to the login page."""


def signer(settings: Settings, fallback: str) -> URLSafeTimedSerializer:
    secret = settings.ui_session_secret.get_secret_value() if settings.ui_session_secret else fallback
    return URLSafeTimedSerializer(secret, salt="autopack-ui")


def get_signer(request: Request) -> URLSafeTimedSerializer:
    serializer: URLSafeTimedSerializer = request.app.state.ui_signer
    return serializer


SignerDep = Annotated[URLSafeTimedSerializer, Depends(get_signer)]


def read_cookie(request: Request, serializer: URLSafeTimedSerializer, name: str, max_age: float) -> Any:
    raw = request.cookies.get(name)
    if not raw:
        return None
    try:
        return serializer.loads(raw, max_age=int(max_age))
    except BadSignature:
        return None


def current(request: Request, session: SessionDep, settings: SettingsDep, serializer: SignerDep) -> UiSession:
    """The logged-in session, or LoginRequired. Without auth, an anonymous session (admin-like)."""
    data = read_cookie(request, serializer, COOKIE, settings.ui_session_hours * 3600)
    if not settings.needs_api_key:
        csrf = data.get("c") if isinstance(data, dict) else None
        if not csrf:
            csrf = new_csrf()
            request.state.mint_session = True  # `render.page` sets the cookie that keeps this token
        return UiSession(Caller.anonymous(), str(csrf), None)
    if not isinstance(data, dict) or not isinstance(data.get("k"), int):
        raise LoginRequired()
    key = session.get(ApiKey, data["k"])
    if key is None or key.revoked_at is not None:
        raise LoginRequired()
    return UiSession(Caller.of(key), str(data["c"]), key.name)


UiDep = Annotated[UiSession, Depends(current)]


def session_cookie(serializer: URLSafeTimedSerializer, key_id: int | None, csrf: str) -> str:
    return serializer.dumps({"k": key_id, "c": csrf})


def new_csrf() -> str:
    return secrets.token_urlsafe(24)


def require_csrf(ui: UiDep, csrf_token: Annotated[str, Form()] = "") -> UiSession:
    """A POST's form must carry this session's token (compared in constant time)."""
    if not csrf_token or not secrets.compare_digest(csrf_token, ui.csrf):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "missing or wrong CSRF token: reload the page")
    return ui


CsrfDep = Annotated[UiSession, Depends(require_csrf)]


def cookie_args(request: Request, max_age: float) -> dict[str, Any]:
    return {
        "httponly": True,
        "samesite": "strict",
        "secure": request.url.scheme == "https",
        "max_age": int(max_age),
        "path": "/ui",
    }
