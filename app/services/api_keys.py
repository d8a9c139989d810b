"""API keys for OpenAI's API under `/v1` with login on: made, listed, revoked and checked here.

A key is `ldk-` and 43 characters of `secrets.token_urlsafe(32)` (256 random bits), so one SHA-256 of it is as
good as a slow hash: nobody can guess their way back from the digest. Only the digest is stored; the key is
shown once, when it is made. `prefix` (its first characters) tells keys apart in lists and cannot be used.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from app.errors import InvalidInput, NotFound
from app.models import ApiKey, utcnow

KEY_START = "ldk-"
PREFIX_LENGTH = 12  # "ldk-" and 8 random characters: enough to tell a handful of keys apart, useless to guess
MAX_NAME = 200  # the column's length
MAX_KEY = 200  # longer bearers are not ours: refused before hashing or reading the database
# A busy client would otherwise write a row on every request; the settings page and `keys list` only need to
# tell a key used today from one unused for months.
LAST_USED_EVERY = timedelta(seconds=60)


@dataclass(frozen=True)
class Verdict:
    """What checking a bearer found: the key when it may be used, else why not (for the 401's message)."""

    key: ApiKey | None
    problem: str


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def aware(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes (stored in UTC); PostgreSQL aware ones."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def could_be_key(key: str) -> bool:
    """Whether `key` has a key's form; anything else is refused without reading the database."""
    return key.startswith(KEY_START) and len(key) <= MAX_KEY


def create_key(*, session: Session, name: str = "") -> tuple[ApiKey, str]:
    """A new key, committed: the row and the key itself, which is not kept anywhere and cannot be shown again."""
    name = name.strip()
    if len(name) > MAX_NAME:
        raise InvalidInput.fields({"name": f"at most {MAX_NAME} characters (this one has {len(name)})"})
    key = KEY_START + secrets.token_urlsafe(32)
    row = ApiKey(name=name or "unnamed", prefix=key[:PREFIX_LENGTH], key_sha256=digest(key))
    session.add(row)
    session.commit()
    return row, key


def list_keys(*, session: Session) -> list[ApiKey]:
    """Every key, revoked ones too (their names say what used to reach the API), newest first."""
    return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at.desc(), ApiKey.id)))


def revoke_key(*, session: Session, key_id: str) -> ApiKey:
    """Revoke a key: from the next request on it is refused. Revoking it again keeps the first time."""
    row = session.get(ApiKey, key_id)
    if row is None:
        raise NotFound(f"no API key with id {key_id}: `loradeck keys list` shows the ids")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.commit()
    return row


def verify_key(*, session: Session, key: str, now: datetime | None = None) -> Verdict:
    """Whether `key` is a live API key; a live key's last-used time is brought up to `now` when it is more than
    LAST_USED_EVERY old (one conditional UPDATE, so web replicas racing on one key write it once)."""
    if not could_be_key(key):
        return Verdict(None, f"this is not a loradeck API key (`{KEY_START}...`)")
    row = session.scalars(select(ApiKey).where(ApiKey.key_sha256 == digest(key))).first()
    if row is None:
        return Verdict(None, f"API key {key[:PREFIX_LENGTH]}… is not known here: it was never made on this server")
    if row.revoked_at is not None:
        when = aware(row.revoked_at).strftime("%Y-%m-%d %H:%M UTC")
        return Verdict(None, f"API key {row.prefix}… ({row.name}) was revoked on {when}: create a new one")
    now = now or utcnow()
    if row.last_used_at is None or aware(row.last_used_at) <= now - LAST_USED_EVERY:
        stale = or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at <= now - LAST_USED_EVERY)
        change = update(ApiKey).where(ApiKey.id == row.id, stale).values(last_used_at=now)
        session.execute(change, execution_options={"synchronize_session": False})
        session.commit()
    return Verdict(row, "")
