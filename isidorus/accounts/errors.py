"""Errors of accounts.

IsidorusError
└── AccountError
    ├── InvalidInput (UsageError)      a name, e-mail or password breaks a rule
    ├── AlreadyExists                  a user, group or API token of that name exists
    ├── NoSuchAccount (NotFoundError)  no user, group or API token of that name
    ├── LoginFailed                    wrong name or password, or disabled: one message
    │                                  for all, so logins do not reveal who exists
    ├── TokenRefused                   an API token that is unknown, expired, or whose
    │                                  user is disabled (HTTP 401)
    └── NotAnAdmin                     a valid API token of a user who is not (or no
                                       longer) an admin (HTTP 403)
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


class TokenRefused(AccountError):
    http_status = 401


class NotAnAdmin(AccountError):
    http_status = 403
