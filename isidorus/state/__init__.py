"""The state database: accounts, groups, sessions, the audit log, and later services.

Glossary
--------
database    One SQLite file by default (`DATA_DIR/state.sqlite`), or PostgreSQL through the
            same SQLAlchemy Core code for hosts that want it.
migration   A named function that moves the schema one step; each runs in a transaction
            together with the record that it ran, and an applied one is never edited.
write       The one way to change the database: a transaction that starts with BEGIN
            IMMEDIATE on SQLite, or takes an advisory lock on PostgreSQL, so concurrent
            writers queue instead of failing midway.
moment      A UtcDateTime column: read back as an aware datetime in UTC from either.

This package knows SQL and nothing of HTTP or the command line.
"""
