"""Editors and admins of the web side: argon2 password hashes, added and removed by `digest users`; the
one place users and their sessions are looked up (the login pages and `digest users` call these).

Readers never log in; these are the few people who review drafts and look after the list.
"""

from __future__ import annotations

import hashlib
import hmac

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from digest.errors import DigestError, NotFound
from digest.store import User
from subscribers.lifecycle import normalize

ROLES = ("editor", "admin")
MIN_PASSWORD = 10

_hasher = PasswordHasher()
#: verified against when the address is unknown, so a login takes as long whether or not it exists
_DUMMY_HASH = _hasher.hash("not a password anyone has")


def _key(email: str) -> str:
    return normalize(email).key


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise DigestError(f"the password is too short: use at least {MIN_PASSWORD} characters")
    return _hasher.hash(password)


def add_user(session: Session, email: str, role: str, password: str) -> User:
    """A new editor or admin. The address must be new; the role one of ROLES."""
    if role not in ROLES:
        raise DigestError(f"role {role!r} is not one of {', '.join(ROLES)}")
    key = _key(email)
    if session.scalar(select(User).where(User.email == key)) is not None:
        raise DigestError(f"user {key} already exists (remove it first to change the role or password)")
    user = User(email=key, role=role, password_hash=hash_password(password))
    session.add(user)
    session.flush()
    return user


def list_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.email)))


def get_user(session: Session, email: str) -> User:
    user = session.scalar(select(User).where(User.email == _key(email)))
    if user is None:
        raise NotFound(f"no user {email.strip()!r}")
    return user


def remove_user(session: Session, email: str) -> User:
    """Delete a user; their open sessions stop working on the next request (the user is gone)."""
    user = get_user(session, email)
    session.delete(user)
    session.flush()
    return user


def authenticate(session: Session, email: str, password: str) -> User | None:
    """The user when the password matches, else None (unknown address and wrong password alike)."""
    try:
        key = _key(email)
    except DigestError:
        key = ""
    user = session.scalar(select(User).where(User.email == key)) if key else None
    try:
        _hasher.verify(user.password_hash if user else _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        return None
    if user is None:
        return None
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
    return user


def session_stamp(user: User) -> str:
    """A short fingerprint of the password hash kept in the session: a new password ends old sessions."""
    return hashlib.sha256(user.password_hash.encode("utf-8")).hexdigest()[:16]


def session_user(session: Session, user_id: int, stamp: str) -> User | None:
    """The user a session cookie names, if it still exists and its password is the one logged in with."""
    user = session.get(User, user_id)
    if user is None or not hmac.compare_digest(stamp, session_stamp(user)):
        return None
    return user
