"""The tables, as SQLAlchemy Core objects (one definition for SQLite and PostgreSQL)."""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

migrations = Table(
    "migrations",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("applied_at", DateTime(timezone=True), nullable=False),
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
    Column("created_at", DateTime(timezone=True), nullable=False),
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
    Column("at", DateTime(timezone=True), nullable=False),
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
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
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
    Column("created_at", DateTime(timezone=True), nullable=False),
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
    Column("auth_time", DateTime(timezone=True), nullable=True),  # when the user logged in
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("used_at", DateTime(timezone=True), nullable=True),  # kept to catch a replay
)

oidc_tokens = Table(
    "oidc_tokens",
    metadata,
    Column("id", String(64), primary_key=True),  # SHA-256 of the access token
    Column("client", Integer, ForeignKey("oidc_clients.id", ondelete="CASCADE"), nullable=False),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("code", String(64), nullable=False),  # the code it was issued for
    Column("scope", Text, nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)

oidc_subjects = Table(
    "oidc_subjects",
    metadata,
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("sub", String(64), nullable=False, unique=True),
)
