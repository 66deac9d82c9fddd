"""Templates and the page response: Jinja2 with autoescaping, a strict Content-Security-Policy (no
inline scripts or styles, nothing from another origin), and the session cookie when one is minted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from api.ui.session import COOKIE, UiSession, cookie_args, session_cookie

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")


def _num(value: Any) -> Any:
    """Floats to 4 significant digits (ratios, means, seconds); anything else as it is."""
    return f"{value:.4g}" if isinstance(value, float) else value


templates.env.filters["num"] = _num
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def page(
    request: Request, ui: UiSession | None, name: str, status: int = 200, **context: Any
) -> HTMLResponse:
    settings = request.app.state.settings
    response = templates.TemplateResponse(
        request,
        name,
        {"ui": ui, "csrf": ui.csrf if ui else None, "embedded": settings.is_embedded, **context},
        status_code=status,
    )
    secure_headers(response)
    minted = getattr(request.state, "mint_session", None)
    if ui is not None and minted:  # an anonymous (embedded) session's first page: keep its CSRF token
        value = session_cookie(request.app.state.ui_signer, None, ui.csrf)
        response.set_cookie(COOKIE, value, **cookie_args(request, settings.ui_session_hours * 3600))
    return response


def secure_headers(response: Any) -> None:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-store"
