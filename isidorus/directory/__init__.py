"""The LDAP directory: isidorus's users and groups, written to an LDAP server (Debian's
slapd) for the services that authenticate by LDAP.

Glossary
--------
base DN       Where isidorus's entries live (`base_dn` of the `[ldap]` table), e.g.
              `dc=example,dc=org`. isidorus owns `ou=people` and `ou=groups` below it:
              whatever else is found there is deleted.
person entry  A user: `uid=NAME,ou=people,BASE`, an inetOrgPerson (uid, cn, sn,
              displayName, mail, userPassword). userPassword is `{ARGON2}` and the user's
              Argon2id hash, which slapd's argon2 module checks, so members bind with their
              own password and isidorus never keeps it in clear. A disabled user's entry
              stays (services keep their data) but has no password, so nobody can bind as
              them, and is in no group.
group entry   A group: `cn=NAME,ou=groups,BASE`, a groupOfNames with one `member` DN per
              enabled member. groupOfNames needs at least one member, so an empty group
              names the base DN, which is nobody's entry.
sync          A full, idempotent reconcile: read the entries isidorus owns, plan the adds,
              modifies and deletes that make them match the state, then execute the plan.
              It runs after every change to the accounts, and by `isidorus directory sync`.

Planning is pure (`entries.py`); only `ldap.py` talks to the server. This package knows
nothing of SQL, HTTP or the command line: it is handed the accounts to write.
"""
