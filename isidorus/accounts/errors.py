"""Errors of accounts.

IsidorusError
└── AccountError
    ├── InvalidInput (UsageError)      a name, e-mail or password breaks a rule
    ├── AlreadyExists                  a user or group of that name exists
    ├── NoSuchAccount (NotFoundError)  no user or group of that name
    └── LoginFailed                    wrong name or password, or disabled: one message
                                       for all, so logins do not reveal who exists
"""

from __future__ import annotations

from isidorus.errors import IsidorusError, NotFoundError, UsageError


class AccountError(IsidorusError):
    pass


class InvalidInput(AccountError, UsageError):
    pass


class AlreadyExists(AccountError):
    exit_code = 1
    http_status = 409


class NoSuchAccount(AccountError, NotFoundError):
    pass


class LoginFailed(AccountError):
    http_status = 401


class Refused(AccountError):
    """The change would leave the host in a state it must not be in (e.g. without an admin)."""

    exit_code = 1
    http_status = 409
