"""Login throttling: failed attempts per user name and per address in a sliding window.

Kept in the state database, so that every server process (and a restart) counts the same
attempts. A success clears the user name's count, not the address's: one right password
does not excuse a run of guesses at other accounts from the same place.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, delete, func, select

from isidorus.state.schema import login_failures

WINDOW = timedelta(minutes=15)
USER_LIMIT = 5
ADDRESS_LIMIT = 30


def _keys(name: str, address: str) -> dict[str, int]:
    return {f"user:{name}"[:300]: USER_LIMIT, f"address:{address}"[:300]: ADDRESS_LIMIT}


def blocked(conn: Connection, name: str, address: str, *, now: datetime | None = None) -> bool:
    """Whether too many attempts failed lately for this name or from this address."""
    since = (now or datetime.now(UTC)) - WINDOW
    for key, limit in _keys(name, address).items():
        count = conn.execute(
            select(func.count())
            .select_from(login_failures)
            .where(login_failures.c.key == key, login_failures.c.at > since)
        ).scalar_one()
        if count >= limit:
            return True
    return False


def failed(conn: Connection, name: str, address: str, *, now: datetime | None = None) -> None:
    now = now or datetime.now(UTC)
    conn.execute(delete(login_failures).where(login_failures.c.at <= now - WINDOW))
    conn.execute(login_failures.insert(), [{"key": k, "at": now} for k in _keys(name, address)])


def succeeded(conn: Connection, name: str) -> None:
    conn.execute(delete(login_failures).where(login_failures.c.key == f"user:{name}"[:300]))
