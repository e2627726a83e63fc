"""Accounts: users, groups and their passwords; one login for every service.

Glossary
--------
user        A person with a login name, e-mail, full name and password; an admin manages
            the host. A disabled user keeps their data but cannot log in anywhere.
group       A set of users; services are opened to groups.
password    Stored as an Argon2id hash (argon2-cffi), checked against rules when set.
API token   An admin's key to the REST API, for programs; shown once, stored as its hash.
audit log   Every change, with who made it (`actor`), in the same transaction.

The functions here take an SQLAlchemy Connection inside a transaction and know nothing of
HTTP or the command line.
"""
