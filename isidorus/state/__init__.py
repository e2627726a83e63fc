"""The state database: accounts, groups, sessions, the audit log, and later services.

Glossary
--------
database    One SQLite file by default (`DATA_DIR/state.sqlite`), or PostgreSQL through the
            same SQLAlchemy Core code for hosts that want it.
migration   A named function that moves the schema one step; each runs in a transaction
            together with the record that it ran, and an applied one is never edited.
write       The one way to change the database: a transaction that, on SQLite, starts
            with BEGIN IMMEDIATE so concurrent writers queue instead of failing midway.

This package knows SQL and nothing of HTTP or the command line.
"""
