"""The tables, as SQLAlchemy Core objects (one definition for SQLite and PostgreSQL).

Moments are `UtcDateTime` columns, so they read back alike from both databases.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

from isidorus.state.types import UtcDateTime

metadata = MetaData()

migrations = Table(
    "migrations",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("applied_at", UtcDateTime(), nullable=False),
)

users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("email", String(254), nullable=False),
    Column("fullname", String(200), nullable=False, default=""),
    Column("password_hash", Text, nullable=False),
    Column("is_admin", Boolean, nullable=False, default=False),
    Column("disabled", Boolean, nullable=False, default=False),
    Column("totp_secret", String(64), nullable=True),
    Column("created_at", UtcDateTime(), nullable=False),
)

groups = Table(
    "groups",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("description", String(200), nullable=False, default=""),
)

memberships = Table(
    "memberships",
    metadata,
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("group_id", Integer, ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("at", UtcDateTime(), nullable=False),
    Column("actor", String(64), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", String(200), nullable=False, default=""),
    Column("detail", Text, nullable=False, default=""),
)

sessions = Table(
    "sessions",
    metadata,
    Column("id", String(64), primary_key=True),  # SHA-256 of the cookie's token
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("csrf", String(64), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("expires_at", UtcDateTime(), nullable=False),
)

# The last TOTP time step a user's code was accepted for: a code is good once.
totp_steps = Table(
    "totp_steps",
    metadata,
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("last_step", Integer, nullable=False),
)

# A login whose password was right, waiting for the second factor's code.
pending_logins = Table(
    "pending_logins",
    metadata,
    Column("id", String(64), primary_key=True),  # SHA-256 of the cookie's token
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("expires_at", UtcDateTime(), nullable=False),
)

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("hash", String(64), nullable=False, unique=True),  # SHA-256 of the token
    Column("created_at", UtcDateTime(), nullable=False),
    Column("last_used_at", UtcDateTime(), nullable=True),
    Column("expires_at", UtcDateTime(), nullable=True),
)

# A password of its own for each app a member signs in with on every request (a calendar
# app): found by its hash, one row each, gone with its user.
app_passwords = Table(
    "app_passwords",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("label", String(64), nullable=False),
    Column("hash", String(64), nullable=False, unique=True),  # SHA-256 of the password
    Column("created_at", UtcDateTime(), nullable=False),
    Column("last_used_at", UtcDateTime(), nullable=True),
)

# The sessions an app password opened: they end with it.
app_sessions = Table(
    "app_sessions",
    metadata,
    Column(
        "session_id", String(64), ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True
    ),  # fmt: skip
    Column(
        "app_password_id",
        Integer,
        ForeignKey("app_passwords.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
)

# -- OpenID Connect: the services that sign their users in through isidorus

oidc_clients = Table(
    "oidc_clients",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("client_id", String(64), nullable=False, unique=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("secret_hash", String(64), nullable=True),  # SHA-256; NULL for a public client
    Column("redirect_uris", Text, nullable=False),  # JSON list, matched exactly
    Column("allowed_groups", Text, nullable=False),  # JSON list of names; [] = every member
    Column("pkce_required", Boolean, nullable=False, default=True),
    Column("created_at", UtcDateTime(), nullable=False),
)

oidc_codes = Table(
    "oidc_codes",
    metadata,
    Column("id", String(64), primary_key=True),  # SHA-256 of the code
    Column("client", Integer, ForeignKey("oidc_clients.id", ondelete="CASCADE"), nullable=False),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("redirect_uri", Text, nullable=False),
    Column("scope", Text, nullable=False),
    Column("nonce", Text, nullable=True),
    Column("code_challenge", String(128), nullable=True),  # S256 only; None: no PKCE
    Column("auth_time", UtcDateTime(), nullable=True),  # when the user logged in
    Column("created_at", UtcDateTime(), nullable=False),
    Column("expires_at", UtcDateTime(), nullable=False),
    Column("used_at", UtcDateTime(), nullable=True),  # kept to catch a replay
)

oidc_tokens = Table(
    "oidc_tokens",
    metadata,
    Column("id", String(64), primary_key=True),  # SHA-256 of the access token
    Column("client", Integer, ForeignKey("oidc_clients.id", ondelete="CASCADE"), nullable=False),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("code", String(64), nullable=False),  # the code it was issued for
    Column("scope", Text, nullable=False),
    Column("expires_at", UtcDateTime(), nullable=False),
)

oidc_subjects = Table(
    "oidc_subjects",
    metadata,
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("sub", String(64), nullable=False, unique=True),
)

# Failed logins, per user name and per address, for throttling (shared by every server
# process; rows older than the window are dropped as new ones come).
login_failures = Table(
    "login_failures",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("key", String(300), nullable=False, index=True),  # "user:NAME" or "address:IP"
    Column("at", UtcDateTime(), nullable=False),
)

# Installed services: what was installed where, and what the install added to the host
# (so a removal with --purge takes away exactly that, and nothing that was there before).
services = Table(
    "services",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("version", String(64), nullable=False),
    Column("domain", String(253), nullable=False),
    Column("path", String(200), nullable=False, default="/"),
    Column("url", String(600), nullable=False, default=""),  # where members reach it
    Column("port", Integer, nullable=False),
    Column("state", String(16), nullable=False),  # installing | installed | removing
    Column("manifest", Text, nullable=False),  # the manifest as installed (JSON)
    Column("added", Text, nullable=False, default="{}"),  # JSON: packages, user, directories
    Column("installed_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
)

service_groups = Table(
    "service_groups",
    metadata,
    Column(
        "service_id", String(64), ForeignKey("services.id", ondelete="CASCADE"), primary_key=True
    ),
    Column("group_id", Integer, ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True),
)

# Runs of the host's jobs (the nightly job, updates): one row per run, one per step of it.
# A run found "running" when the next one of its kind starts was cut short (the next one
# holds the lock that only one run at a time may hold) and is marked "interrupted".
runs = Table(
    "runs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("kind", String(32), nullable=False, index=True),  # nightly | update
    Column("status", String(16), nullable=False),  # running | ok | failed | interrupted
    Column("started_at", UtcDateTime(), nullable=False),
    Column("finished_at", UtcDateTime(), nullable=True),
    Column("pid", Integer, nullable=False),
    Column("bytes", BigInteger, nullable=False, default=0),  # new bytes stored or sent
    Column("errors", Integer, nullable=False, default=0),  # steps that failed
    Column("log", Text, nullable=False, default=""),  # what it said, line by line
)

run_steps = Table(
    "run_steps",
    metadata,
    Column("id", Integer, primary_key=True),
    Column(
        "run_id", Integer, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False, index=True
    ),
    Column("step", String(32), nullable=False),  # dump | backup | sync | verify | prune | gc …
    Column("target", String(200), nullable=False, default=""),  # a service, a remote…
    Column("status", String(16), nullable=False),  # ok | failed | skipped
    Column("started_at", UtcDateTime(), nullable=False),
    Column("seconds", Float, nullable=False, default=0.0),
    Column("bytes", BigInteger, nullable=False, default=0),
    Column("error", Text, nullable=False, default=""),
    Column("detail", Text, nullable=False, default="{}"),  # JSON: the step's own figures
)
