"""Schema migrations: named functions, applied in order, each in one transaction with the
record that it ran (sqlite-utils' way). Never edit one that was released: add a new one.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import Connection, inspect, select

from isidorus.state import schema
from isidorus.state.db import Database

Migration = Callable[[Connection], None]


def m0001_accounts(conn: Connection) -> None:
    """Users, groups, memberships and the audit log."""
    for table in (schema.users, schema.groups, schema.memberships, schema.audit_log):
        table.create(conn)


def m0002_sessions(conn: Connection) -> None:
    """Logins: one row per browser session, found by the hash of its cookie."""
    schema.sessions.create(conn)


def m0003_api_tokens(conn: Connection) -> None:
    """API tokens: one row per token, found by its hash, owned by an admin."""
    schema.api_tokens.create(conn)


def m0004_oidc(conn: Connection) -> None:
    """OpenID Connect: the registered services, the codes and access tokens issued to
    them (by hash), and each user's stable subject identifier."""
    for table in (schema.oidc_clients, schema.oidc_codes, schema.oidc_tokens, schema.oidc_subjects):
        table.create(conn)


def m0006_second_factor(conn: Connection) -> None:
    """TOTP: the last accepted time step per user, and logins waiting for their code."""
    schema.totp_steps.create(conn)
    schema.pending_logins.create(conn)


def m0007_login_failures(conn: Connection) -> None:
    """Login throttling in the database, so that every server process counts alike."""
    schema.login_failures.create(conn)


def m0008_services(conn: Connection) -> None:
    """Installed services, and the groups allowed to use each."""
    schema.services.create(conn)
    schema.service_groups.create(conn)


def m0009_runs(conn: Connection) -> None:
    """Runs of the host's jobs (nightly, updates) and their steps."""
    schema.runs.create(conn)
    schema.run_steps.create(conn)


def m0010_app_passwords(conn: Connection) -> None:
    """App passwords: one per app a member signs in with (calendar, contacts), by hash,
    and the sessions each opened (which end with it)."""
    schema.app_passwords.create(conn)
    schema.app_sessions.create(conn)


MIGRATIONS: tuple[tuple[str, Migration], ...] = (
    ("0001_accounts", m0001_accounts),
    ("0002_sessions", m0002_sessions),
    ("0003_api_tokens", m0003_api_tokens),
    ("0004_oidc", m0004_oidc),
    ("0006_second_factor", m0006_second_factor),
    ("0007_login_failures", m0007_login_failures),
    ("0008_services", m0008_services),
    ("0009_runs", m0009_runs),
    ("0010_app_passwords", m0010_app_passwords),
)


def applied(db: Database) -> list[str]:
    with db.write() as conn:
        if not inspect(conn).has_table("migrations"):
            return []
        names = select(schema.migrations.c.name).order_by(schema.migrations.c.name)
        return [r[0] for r in conn.execute(names)]


def migrate(db: Database) -> list[str]:
    """Apply the migrations not yet applied; returns their names. Safe to run at every
    start, and from two processes at once (the second finds nothing left to do)."""
    with db.write() as conn:
        schema.migrations.create(conn, checkfirst=True)
    done = []
    for name, fn in MIGRATIONS:
        with db.write() as conn:
            if conn.execute(
                select(schema.migrations.c.name).where(schema.migrations.c.name == name)
            ).first():
                continue
            fn(conn)
            conn.execute(schema.migrations.insert().values(name=name, applied_at=datetime.now(UTC)))
        done.append(name)
    return done
