"""Clinic staff: password hashing, sessions, CSRF tokens, login rate limit and roles.

* Passwords are hashed with Argon2id (``argon2-cffi``, the current OWASP recommendation), never stored.
* Sessions are Starlette's signed cookie (``SessionMiddleware``, itsdangerous under the hood) holding only
  the user id, the user's session epoch, the issue time and the CSRF token. The server checks the epoch
  (logout and password change bump it, revoking every old cookie) and the age on every request.
* Every form carries a per-session CSRF token (:func:`csrf_token`), compared in constant time.
* Logins are rate limited per user name and per client address from the ``login_attempts`` table, so the
  limit holds across several console instances sharing one database; the count and the record of an
  attempt are one atomic step (:meth:`FleetDB.reserve_login_attempt`), so parallel attempts cannot slip
  past it.
* Two roles: ``viewer`` sees everything; ``operator`` may also push configs and start rollouts.
"""
from __future__ import annotations

import datetime as dt
import hmac
import logging
import secrets
import time
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from appliance.fleet.db import FleetDB, utcnow

logger = logging.getLogger(__name__)

ROLES = ("viewer", "operator")
_ROLE_RANK = {"viewer": 0, "operator": 1}

_hasher = PasswordHasher()  # argon2-cffi's defaults: Argon2id, RFC 9106 "low memory" profile
_dummy_hash: str | None = None


def use_hasher(hasher: PasswordHasher) -> None:
    """Replace the password hasher (tests use ``argon2.profiles.CHEAPEST``; a clinic may raise the cost).
    Existing hashes keep verifying and are re-hashed with the new parameters at the next login."""
    global _hasher, _dummy_hash
    _hasher, _dummy_hash = hasher, None


def _dummy() -> str:
    # A hash of a random password, verified against when the user name does not exist, so a login for an
    # unknown user takes as long as one with a wrong password (no user enumeration by timing).
    global _dummy_hash
    if _dummy_hash is None:
        _dummy_hash = _hasher.hash(secrets.token_urlsafe(16))
    return _dummy_hash

MIN_PASSWORD_LENGTH = 10


class AuthError(Exception):
    """Login refused (wrong user or password). The message is safe to show."""


class RateLimited(AuthError):
    """Too many failed logins recently for this user or this address."""


@dataclass(frozen=True)
class LoginPolicy:
    """How strict the login is.

    Attributes
    ----------
    max_failures : int
        Failed attempts allowed per user name, and per client address, inside ``window_s``.
    window_s : float
        The sliding window, seconds.
    session_max_age_s : float
        A session is valid this long after login, seconds.
    """

    max_failures: int = 5
    window_s: float = 300.0
    session_max_age_s: float = 8 * 3600.0


@dataclass(frozen=True)
class User:
    id: int
    username: str
    role: str

    def can(self, role: str) -> bool:
        """True when this user has at least ``role``."""
        return _ROLE_RANK[self.role] >= _ROLE_RANK[role]


def hash_password(password: str) -> str:
    """Argon2id hash of ``password`` (with a random salt, parameters encoded in the string)."""
    return _hasher.hash(password)


def create_user(db: FleetDB, username: str, password: str, role: str) -> int:
    """Add a staff account.

    Raises
    ------
    ValueError
        For an unknown role, an empty or over-long user name, or a password shorter than
        ``MIN_PASSWORD_LENGTH`` characters.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, not {role!r}")
    if not username or len(username) > 64 or not username.isprintable():
        raise ValueError("user name must be 1-64 printable characters")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"password must be at least {MIN_PASSWORD_LENGTH} characters")
    return db.add_user(username, hash_password(password), role)


def authenticate(db: FleetDB, username: str, password: str, *, remote: str,
                 policy: LoginPolicy = LoginPolicy()) -> User:
    """Check a login; return the user or raise.

    Raises
    ------
    RateLimited
        When the user name or the address has ``policy.max_failures`` failures in the window
        (checked before the password, so a locked-out guesser learns nothing).
    AuthError
        For an unknown user or a wrong password (same message for both).
    """
    since = utcnow() - dt.timedelta(seconds=policy.window_s)
    # Check and record in one atomic step: parallel attempts cannot all pass the count (issue 11 #5).
    attempt = db.reserve_login_attempt(username, remote, since=since, max_failures=policy.max_failures)
    if attempt is None:
        logger.warning("login rate limit hit for user %r from %s", username, remote)
        raise RateLimited("too many failed logins; try again later")
    row = db.get_user(username=username)
    try:
        _hasher.verify(row["password_hash"] if row else _dummy(), password)
        ok = row is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        ok = False
    if not ok:
        raise AuthError("wrong user name or password")
    db.mark_login_ok(attempt)
    if _hasher.check_needs_rehash(row["password_hash"]):
        db.set_password_hash(row["id"], hash_password(password))
        row = db.get_user(user_id=row["id"])
    return User(id=row["id"], username=row["username"], role=row["role"])


# ---- sessions -------------------------------------------------------------------------------------
def start_session(session: dict, db: FleetDB, user: User) -> None:
    """Fill a fresh session for ``user`` (the old contents, including the CSRF token, are dropped)."""
    row = db.get_user(user_id=user.id)
    session.clear()
    session["uid"] = user.id
    session["epoch"] = row["session_epoch"] if row else 0
    session["issued"] = time.time()
    session["csrf"] = secrets.token_urlsafe(32)


def end_session(session: dict, db: FleetDB) -> None:
    """Log out: revoke every session of this user (epoch bump) and clear the cookie."""
    uid = session.get("uid")
    if isinstance(uid, int):
        db.bump_session_epoch(uid)
    session.clear()


def session_user(session: dict, db: FleetDB, *, policy: LoginPolicy = LoginPolicy(),
                 now: float | None = None) -> User | None:
    """The logged-in user of this session, or None when absent, expired or revoked."""
    uid, epoch, issued = session.get("uid"), session.get("epoch"), session.get("issued")
    if not isinstance(uid, int) or not isinstance(epoch, int) or not isinstance(issued, (int, float)):
        return None
    if (time.time() if now is None else now) - issued > policy.session_max_age_s:
        return None
    row = db.get_user(user_id=uid)
    if row is None or row["session_epoch"] != epoch:
        return None
    return User(id=row["id"], username=row["username"], role=row["role"])


def csrf_token(session: dict) -> str:
    """This session's CSRF token, created on first use (the login form gets one too)."""
    token = session.get("csrf")
    if not isinstance(token, str) or len(token) < 32:
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
    return token


def csrf_ok(session: dict, submitted: str | None) -> bool:
    """True when ``submitted`` matches the session's token (constant-time comparison)."""
    expected = session.get("csrf")
    if not isinstance(expected, str) or not submitted:
        return False
    return hmac.compare_digest(expected.encode(), submitted.encode())
