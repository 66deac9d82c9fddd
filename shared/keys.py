"""API keys: shown once at creation, stored only as a SHA-256 hash (keys are 256-bit random, so a
fast hash is enough; there is nothing to brute-force). A key acts for its `owner`; runs belong to
the owner that submitted them, and only an admin key sees other owners' runs."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Select, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session

from shared.errors import NotFound
from shared.models import ApiKey, utcnow

PREFIX = "apk_"
Q = TypeVar("Q", bound=Select[*tuple[Any, ...]])


@dataclass(frozen=True)
class Caller:
    """Who a request acts for. `owner` None = no auth (embedded): like an admin, sees everything."""

    owner: str | None
    admin: bool
    key_id: int | None = None
    """The key's row id, recorded with what the caller decides (approvals)."""

    @classmethod
    def anonymous(cls) -> Caller:
        return cls(owner=None, admin=True)

    @classmethod
    def of(cls, key: ApiKey) -> Caller:
        return cls(owner=key.owner, admin=key.admin, key_id=key.id)

    @property
    def who(self) -> str:
        """How a decision names its maker: `key <id> (<owner>)`, or `anonymous` without auth."""
        return "anonymous" if self.key_id is None else f"key {self.key_id} ({self.owner})"


def owned_by(query: Q, caller: Caller | None, owner: InstrumentedAttribute[str | None]) -> Q:
    """Only rows whose `owner` column is the caller's, unless it is an admin (or internal code,
    `caller` None): how runs, and the approvals of their changes, are kept to their owner."""
    if caller is None or caller.admin:
        return query
    return query.where(owner == caller.owner)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(
    session: Session, name: str, *, owner: str | None = None, admin: bool = False
) -> tuple[ApiKey, str]:
    """Store a new key (owner defaults to its name); return the row and the plaintext, which is never
    stored or logged."""
    plain = PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(name=name, owner=owner or name, admin=admin, prefix=plain[:10], key_hash=hash_key(plain))
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


class VerifiedKeys:
    """Callers of keys verified in the last `ttl` seconds, by the key's digest (never the key), at most
    `size` of them: a hit spares a database round trip and a thread hop per request, and a key revoked
    meanwhile is refused once its entry is `ttl` old. Failed lookups are not kept, so a new key works
    at once. Used from one thread (the API's event loop)."""

    def __init__(self, ttl: float, size: int = 1024, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.size = size
        self._clock = clock
        self._entries: dict[str, tuple[float, Caller]] = {}

    def get(self, presented: str) -> Caller | None:
        if self.ttl <= 0:
            return None
        digest = hash_key(presented)
        entry = self._entries.get(digest)
        if entry is None:
            return None
        if self._clock() >= entry[0]:
            del self._entries[digest]
            return None
        return entry[1]

    def put(self, presented: str, caller: Caller) -> None:
        if self.ttl <= 0:
            return
        digest = hash_key(presented)
        self._entries.pop(digest, None)
        while len(self._entries) >= self.size:  # insertion order is expiry order: drop the oldest
            del self._entries[next(iter(self._entries))]
        self._entries[digest] = (self._clock() + self.ttl, caller)


def list_keys(session: Session) -> Sequence[ApiKey]:
    return session.scalars(select(ApiKey).order_by(ApiKey.id)).all()


def revoke_key(session: Session, name: str) -> int:
    """Revoke every live key called `name` (the next request with one is 401); return how many."""
    done = session.execute(
        update(ApiKey).where(ApiKey.name == name, ApiKey.revoked_at.is_(None)).values(revoked_at=utcnow())
    )
    revoked: int = getattr(done, "rowcount", 0)
    if revoked == 0:
        raise NotFound(f"no live key named {name!r}")
    return revoked
