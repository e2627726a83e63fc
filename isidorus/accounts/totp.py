"""The optional second factor: time-based one-time codes (RFC 6238, as every
authenticator app speaks), through pyotp.

A member turns it on by scanning a secret and typing one code from it (so a mistyped secret
never locks them out). At login, a right password then only opens a *pending login*: a
short-lived token in its own cookie, good for a few attempts at the code. A code is accepted
once (its time step is remembered), within one step of clock drift either way.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from datetime import UTC, datetime, timedelta

import pyotp
import segno
from sqlalchemy import Connection, delete, select, update

from isidorus.accounts.errors import InvalidInput, LoginFailed
from isidorus.accounts.users import User, find_row, get_user
from isidorus.state.schema import pending_logins, totp_steps, users

PENDING_LIFETIME = timedelta(minutes=5)
PENDING_ATTEMPTS = 5
DRIFT = 1  # time steps accepted before and after the current one


def new_secret() -> str:
    return pyotp.random_base32()


def setup_uri(secret: str, name: str, issuer: str) -> str:
    """The otpauth:// URI that authenticator apps read from the QR code."""
    return pyotp.TOTP(secret).provisioning_uri(name=name, issuer_name=issuer)


def qr_svg(uri: str) -> str:
    """The QR code of `uri` as an SVG data URI, drawn here (no external service)."""
    return str(segno.make(uri, error="m").svg_data_uri(scale=5, border=2))


def _step_of(secret: str, code: str, now: float) -> int | None:
    """The time step `code` is valid for, within the allowed drift; None if none."""
    code = code.replace(" ", "")
    if not (code.isdigit() and len(code) == 6):
        return None
    totp = pyotp.TOTP(secret)
    step = totp.timecode(datetime.fromtimestamp(now, UTC))
    for candidate in range(step - DRIFT, step + DRIFT + 1):
        if hmac.compare_digest(totp.generate_otp(candidate), code):
            return candidate
    return None


def turn_on(conn: Connection, name: str, secret: str, code: str, *, now: float = 0.0) -> None:
    """Store `secret` for user `name`, once `code` shows their app has it right."""
    row = find_row(conn, name)
    try:
        pyotp.TOTP(secret).now()
    except (ValueError, TypeError):  # binascii.Error, for a secret that is not base32
        raise InvalidInput("the secret is not valid base32: start the setup again") from None
    step = _step_of(secret, code, now or time.time())
    if step is None:
        raise InvalidInput("that code does not match: check the time on your phone and retry")
    conn.execute(update(users).where(users.c.id == row.id).values(totp_secret=secret))
    conn.execute(delete(totp_steps).where(totp_steps.c.user_id == row.id))
    conn.execute(totp_steps.insert().values(user_id=row.id, last_step=step))


def turn_off(conn: Connection, name: str) -> None:
    row = find_row(conn, name)
    conn.execute(update(users).where(users.c.id == row.id).values(totp_secret=None))
    conn.execute(delete(totp_steps).where(totp_steps.c.user_id == row.id))


def check_code(conn: Connection, user_id: int, code: str, *, now: float = 0.0) -> bool:
    """Whether `code` is a good, not yet used code of the user; remembers its step."""
    row = conn.execute(select(users.c.totp_secret).where(users.c.id == user_id)).first()
    if row is None or row.totp_secret is None:
        return False
    step = _step_of(row.totp_secret, code, now or time.time())
    if step is None:
        return False
    last = conn.execute(
        select(totp_steps.c.last_step).where(totp_steps.c.user_id == user_id)
    ).scalar()
    if last is not None and step <= last:
        return False  # replayed, or older than one already used
    conn.execute(delete(totp_steps).where(totp_steps.c.user_id == user_id))
    conn.execute(totp_steps.insert().values(user_id=user_id, last_step=step))
    return True


def _key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def start_pending(conn: Connection, user: User, *, now: datetime | None = None) -> str:
    """A pending login for `user` (password checked): the token of its cookie."""
    now = now or datetime.now(UTC)
    conn.execute(delete(pending_logins).where(pending_logins.c.expires_at <= now))
    token = secrets.token_urlsafe(32)
    conn.execute(
        pending_logins.insert().values(
            id=_key(token), user_id=user.id, attempts=0, expires_at=now + PENDING_LIFETIME
        )
    )
    return token


def finish_pending(
    conn: Connection, token: str, name: str, code: str, *, now: datetime | None = None
) -> User | LoginFailed:
    """User `name`, if the pending login is theirs and its code is right (the pending login
    ends); otherwise the failure, returned rather than raised so that the caller commits
    what it recorded (one more attempt, or the pending login ended after too many)."""
    now = now or datetime.now(UTC)
    row = conn.execute(select(pending_logins).where(pending_logins.c.id == _key(token))).first()
    if row is None:
        return LoginFailed("this login has expired: enter your password again")
    expires = row.expires_at if row.expires_at.tzinfo else row.expires_at.replace(tzinfo=UTC)
    user_row = conn.execute(select(users).where(users.c.id == row.user_id)).first()
    if expires <= now or user_row is None or user_row.disabled or user_row.name != name:
        conn.execute(delete(pending_logins).where(pending_logins.c.id == row.id))
        return LoginFailed("this login has expired: enter your password again")
    if check_code(conn, row.user_id, code, now=now.timestamp()):
        conn.execute(delete(pending_logins).where(pending_logins.c.id == row.id))
        return get_user(conn, user_row.name)
    if row.attempts + 1 >= PENDING_ATTEMPTS:
        conn.execute(delete(pending_logins).where(pending_logins.c.id == row.id))
        return LoginFailed("too many wrong codes: enter your password again")
    conn.execute(
        update(pending_logins)
        .where(pending_logins.c.id == row.id)
        .values(attempts=row.attempts + 1)
    )
    return LoginFailed("wrong code: type the 6 digits your app shows now")
