"""Errors of the OpenID Connect provider.

IsidorusError
└── OidcError
    ├── InvalidInput (UsageError)       a client name, redirect URI or group breaks a rule
    ├── ClientExists                    a client of that name exists
    ├── NoSuchClient (NotFoundError)    no client of that name
    ├── BadAuthorizationRequest         an authorization request that cannot be answered
    │   (UsageError)                    to the client: unknown client, unregistered
    │                                   redirect URI (the browser is not sent there)
    ├── LoginRequired                   the request is sound, the person must log in first
    ├── NotPermitted                    logged in, but in none of the client's groups
    └── InsecureIssuer                  the issuer is not HTTPS (nor a loopback address)
"""

from __future__ import annotations

from isidorus.errors import IsidorusError, NotFoundError, UsageError


class OidcError(IsidorusError):
    pass


class InvalidInput(OidcError, UsageError):
    pass


class ClientExists(OidcError):
    exit_code = 1
    http_status = 409


class NoSuchClient(OidcError, NotFoundError):
    pass


class BadAuthorizationRequest(OidcError, UsageError):
    pass


class LoginRequired(OidcError):
    http_status = 401


class NotPermitted(OidcError):
    http_status = 403


class InsecureIssuer(OidcError):
    http_status = 500
