"""Approval notifications: a generic outgoing webhook, sent from an outbox row after commit.

The row (`webhook_deliveries`) is written in the transaction that pauses the phase, with the exact body;
a sender (the pausing worker right after its commit, then every reconciler pass) claims a due row by
pushing its `next_try_at` forward in a conditional UPDATE, so two senders never send it at the same time,
and POSTs it. A failure waits `approval_webhook_backoff_seconds`, doubled per further failure, until
`approval_webhook_attempts` tries were made; the row then records that it gave up.

Signature: `X-Autopack-Signature: sha256=<hex>`, the HMAC-SHA256 with `approval_webhook_secret` of
`<X-Autopack-Timestamp>.<raw body>`: binding the timestamp lets a receiver refuse replays of old bodies.
Neither the secret nor the URL (which often embeds a token) is ever logged; only its host is.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from datetime import timedelta
from urllib.parse import urlsplit

import httpx
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared.db import transaction
from shared.models import Approval, Phase, WebhookDelivery, utcnow
from shared.settings import Settings

log = logging.getLogger(__name__)
EVENT = "approval.requested"
BATCH = 50


def sign(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def body_of(approval: Approval, phase: Phase, api_url: str) -> str:
    base = api_url.rstrip("/")
    return json.dumps(
        {
            "event": EVENT,
            "approval_id": approval.id,
            "run_id": approval.run_id,
            "phase_index": phase.index,
            "phase_name": phase.name,
            "goal": str(phase.spec.get("goal", "")),
            "attempt": approval.attempt_number,
            "paths": approval.paths,
            "requested_at": approval.requested_at.isoformat(),
            "expires_at": approval.expires_at.isoformat() if approval.expires_at else None,
            "url": f"{base}/approvals/{approval.id}",
            "dashboard_url": f"{base}/ui/approvals/{approval.id}",
        },
        sort_keys=True,
    )


def enqueue(session: Session, approval: Approval, phase: Phase, settings: Settings) -> None:
    """Inside the pausing transaction: the notification's outbox row (none without a webhook URL;
    one per approval however often this runs)."""
    if not settings.approval_webhook_url:
        return
    exists = session.scalar(
        select(WebhookDelivery.id).where(
            WebhookDelivery.approval_id == approval.id, WebhookDelivery.event == EVENT
        )
    )
    if exists is None:
        session.add(
            WebhookDelivery(
                approval_id=approval.id, event=EVENT, body=body_of(approval, phase, settings.api_url)
            )
        )


def deliver_due(settings: Settings, approval_id: int | None = None) -> int:
    """Send every due delivery once (only `approval_id`'s, when given: a pausing worker sends its own
    and leaves a slow receiver's backlog to the reconciler); returns how many were delivered. Never
    raises for a send."""
    if not settings.approval_webhook_url:
        return 0
    now = utcnow()
    query = select(WebhookDelivery.id).where(
        WebhookDelivery.delivered_at.is_(None),
        WebhookDelivery.gave_up_at.is_(None),
        WebhookDelivery.next_try_at <= now,
    )
    if approval_id is not None:
        query = query.where(WebhookDelivery.approval_id == approval_id)
    with transaction(settings.database_url) as session:
        due = session.scalars(query.order_by(WebhookDelivery.next_try_at).limit(BATCH)).all()
    return sum(_deliver(settings, delivery_id) for delivery_id in due)


def _claim(settings: Settings, delivery_id: int) -> tuple[str, int] | None:
    """Win the due row (its body and try number) or None if another sender did: the claim moves
    `next_try_at` past the send's time limit, so the row is not due for anyone else meanwhile."""
    now = utcnow()
    hold = now + timedelta(seconds=settings.approval_webhook_timeout_seconds * 2)
    with transaction(settings.database_url) as session:
        row = session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == delivery_id,
                WebhookDelivery.next_try_at <= now,
                WebhookDelivery.delivered_at.is_(None),
                WebhookDelivery.gave_up_at.is_(None),
            )
            .values(next_try_at=hold, tries=WebhookDelivery.tries + 1)
            .returning(WebhookDelivery.body, WebhookDelivery.tries)
        ).first()
    return None if row is None else (row.body, row.tries)


def _deliver(settings: Settings, delivery_id: int) -> bool:
    claimed = _claim(settings, delivery_id)
    if claimed is None:
        return False
    body, tries = claimed
    status, error = post(settings, body.encode())
    now = utcnow()
    values: dict[str, object] = {"last_status": status, "last_error": error}
    if error is None:
        values["delivered_at"] = now
    elif tries >= settings.approval_webhook_attempts:
        values["gave_up_at"] = now
        log.error("approval webhook to %s: gave up after %d tries: %s", _host(settings), tries, error)
    else:
        wait = settings.approval_webhook_backoff_seconds * 2 ** (tries - 1)
        values["next_try_at"] = now + timedelta(seconds=wait)
        log.warning(
            "approval webhook to %s failed (try %d), retrying in %gs: %s", _host(settings), tries, wait, error
        )
    with transaction(settings.database_url) as session:
        session.execute(update(WebhookDelivery).where(WebhookDelivery.id == delivery_id).values(values))
    return error is None


def post(settings: Settings, body: bytes) -> tuple[int | None, str | None]:
    """POST the body, signed; (status, None) on 2xx, else (status or None, what went wrong)."""
    assert settings.approval_webhook_url is not None
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "X-Autopack-Timestamp": timestamp,
        "X-Autopack-Event": EVENT,
    }
    if settings.approval_webhook_secret is not None:
        headers["X-Autopack-Signature"] = sign(
            settings.approval_webhook_secret.get_secret_value(), timestamp, body
        )
    try:
        response = httpx.post(
            settings.approval_webhook_url,
            content=body,
            headers=headers,
            timeout=settings.approval_webhook_timeout_seconds,
        )
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}"[:500]  # the message may quote the URL
    if 200 <= response.status_code < 300:
        return response.status_code, None
    return response.status_code, f"HTTP {response.status_code}"


def _host(settings: Settings) -> str:
    return urlsplit(settings.approval_webhook_url or "").hostname or "?"
