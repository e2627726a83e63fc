"""Accounts: users, groups and their passwords; one login for every service.

Glossary
--------
user        A person with a login name, e-mail, full name and password; an admin manages
            the host. A disabled user keeps their data but cannot log in anywhere.
group       A set of users; services are opened to groups.
password    Stored as an Argon2id hash (argon2-cffi), checked against rules when set.

The functions here take an SQLAlchemy Connection inside a transaction and know nothing of
HTTP or the command line.
"""
