"""API keys: shown once at creation, stored only as a SHA-256 hash (keys are 256-bit random, so a
fast hash is enough; there is nothing to brute-force)."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.models import ApiKey

PREFIX = "apk_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(session: Session, name: str) -> tuple[ApiKey, str]:
    """Store a new key; return the row and the plaintext, which is never stored or logged."""
    plain = PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(name=name, prefix=plain[:10], key_hash=hash_key(plain))
    session.add(row)
    session.flush()
    return row, plain


def verify_key(session: Session, presented: str | None) -> ApiKey | None:
    if not presented:
        return None
    digest = hash_key(presented)
    row = session.scalars(
        select(ApiKey).where(ApiKey.key_hash == digest, ApiKey.revoked_at.is_(None))
    ).first()
    # The lookup is by digest; compare again in constant time so timing says nothing about near misses.
    if row is None or not hmac.compare_digest(row.key_hash, digest):
        return None
    return row
