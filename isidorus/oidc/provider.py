"""The protocol, by authlib: the authorization code grant with PKCE (S256 only), the
OpenID Connect code flow, bearer access tokens for the userinfo endpoint.

authlib's server classes are framework-neutral; `Request` is the OAuth2Request made from
plain values (the web builds it from its request), and every answer comes back as an
`Answer` (status, JSON or text body, headers) for the web to send. A `Provider` works in
one transaction, given as a Connection.
"""

from __future__ import annotations

import secrets
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from authlib.common.security import is_secure_transport
from authlib.consts import default_json_headers
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import (
    AuthorizationServer,
    ClientMixin,
    InsecureTransportError,
    InvalidRequestError,
    OAuth2Payload,
    OAuth2Request,
    ResourceProtector,
    TokenMixin,
)
from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant
from authlib.oauth2.rfc6750 import BearerTokenGenerator, BearerTokenValidator
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import AuthorizationCodeMixin
from authlib.oidc.core.grants import OpenIDCode
from joserfc.jwk import RSAKey
from sqlalchemy import Connection

from isidorus.accounts.users import User, get_user
from isidorus.oidc import claims, tokens
from isidorus.oidc.clients import Client, find_client, find_client_by_pk
from isidorus.oidc.errors import (
    BadAuthorizationRequest,
    InsecureIssuer,
    LoginRequired,
    NotPermitted,
)
from isidorus.oidc.keys import ALGORITHM
from isidorus.state.schema import users

ID_TOKEN_LIFETIME = 3600  # seconds
AUTHORIZE_PATH = "/oidc/authorize"
TOKEN_PATH = "/oidc/token"
USERINFO_PATH = "/oidc/userinfo"
JWKS_PATH = "/oidc/jwks"
DISCOVERY_PATH = "/.well-known/openid-configuration"


@dataclass(frozen=True)
class ProviderOptions:
    issuer: str  # the base URL, without a trailing slash
    key: RSAKey

    def url(self, path: str) -> str:
        return self.issuer + path


@dataclass(frozen=True)
class Answer:
    """An HTTP answer: a JSON document (dict) or text, with its headers. `issued_to` names
    the client a code was issued to (for the audit log)."""

    status: int
    body: dict[str, Any] | str
    headers: tuple[tuple[str, str], ...]
    issued_to: str = ""


class _Payload(OAuth2Payload):  # type: ignore[misc]
    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self._datalist: defaultdict[str, list[str]] = defaultdict(list)
        for k, v in pairs:
            self._datalist[k].append(v)
        self._data = {k: v[0] for k, v in self._datalist.items()}

    @property
    def data(self) -> dict[str, str]:
        return self._data

    @property
    def datalist(self) -> defaultdict[str, list[str]]:
        return self._datalist


class Request(OAuth2Request):  # type: ignore[misc]
    """An OAuth 2 request from plain values: the method, the URL as the issuer sees it,
    the headers, the query and the form."""

    def __init__(
        self,
        method: str,
        uri: str,
        headers: Mapping[str, str],
        query: Iterable[tuple[str, str]] = (),
        form: Iterable[tuple[str, str]] = (),
    ) -> None:
        try:
            super().__init__(method, uri, headers=headers)
        except InsecureTransportError:
            Provider.check_issuer(uri)
            raise
        self._args = list(query)
        self._form = list(form)
        self.payload = _Payload(self._args + self._form)

    @property
    def args(self) -> dict[str, str]:
        return dict(reversed(self._args))  # the first of a repeated name, as in payload

    @property
    def form(self) -> dict[str, str]:
        return dict(reversed(self._form))


class _Client(ClientMixin):  # type: ignore[misc]
    """A client as authlib sees it."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def get_client_id(self) -> str:
        return self.client.client_id

    def get_default_redirect_uri(self) -> str | None:
        # with several, the request must say which: no guess
        uris = self.client.redirect_uris
        return uris[0] if len(uris) == 1 else None

    def get_allowed_scope(self, scope: str | None) -> str:
        # scopes we do not know (offline_access, …) are dropped, not refused
        return " ".join(s for s in (scope or "").split() if s in claims.SCOPES)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.client.redirect_uris  # exact match, no patterns

    def check_client_secret(self, client_secret: str) -> bool:
        return self.client.check_secret(client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if self.client.public:
            return method == "none"
        return method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "authorization_code"


class _Code(AuthorizationCodeMixin):  # type: ignore[misc]
    def __init__(self, code: tokens.Code) -> None:
        self.code = code
        self.code_challenge = code.code_challenge
        self.code_challenge_method = "S256" if code.code_challenge else None

    def get_redirect_uri(self) -> str:
        return self.code.redirect_uri

    def get_scope(self) -> str:
        return self.code.scope

    def get_nonce(self) -> str | None:
        return self.code.nonce

    def get_auth_time(self) -> int | None:
        when = self.code.auth_time
        return None if when is None else int(when.timestamp())


class _Token(TokenMixin):  # type: ignore[misc]
    def __init__(self, token: tokens.AccessToken, user: User) -> None:
        self.token, self.user = token, user

    def get_scope(self) -> str:
        return self.token.scope

    def is_expired(self) -> bool:
        return False  # find_token gives live tokens only

    def is_revoked(self) -> bool:
        return False


class _CodeGrant(AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]
    server: _Server

    def save_authorization_code(self, code: str, request: Request) -> None:
        client: Client = request.client.client
        tokens.save_code(
            self.server.conn,
            code,
            client=client.id,
            user_id=request.user.id,
            # as requested: the token request must repeat it only if it was given
            redirect_uri=request.payload.redirect_uri or "",
            scope=request.scope or "",
            nonce=request.payload.data.get("nonce"),
            code_challenge=request.payload.data.get("code_challenge"),
            auth_time=self.server.auth_time,
        )
        self.server.issued_to = client.name

    def query_authorization_code(self, code: str, client: _Client) -> _Code | None:
        found = tokens.find_code(self.server.conn, code, client.client.id)
        return None if found is None else _Code(found)

    def delete_authorization_code(self, authorization_code: _Code) -> None:
        tokens.use_code(self.server.conn, authorization_code.code)

    def authenticate_user(self, authorization_code: _Code) -> User | None:
        # the person may have been disabled, removed or taken out of the client's
        # groups since the code was issued
        client = self.request.client.client
        return self.server.user(authorization_code.code.user_id, client)


class _S256Only(CodeChallenge):  # type: ignore[misc]
    """PKCE with S256 (`plain` shows the verifier to whoever sees the authorization
    request, so it proves nothing), for every client but the confidential ones
    registered with --no-pkce."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]
    DEFAULT_CODE_CHALLENGE_METHOD = "S256"

    def validate_code_challenge(self, grant: _CodeGrant, redirect_uri: str) -> None:
        data = grant.request.payload.data
        client: Client = grant.request.client.client
        if not client.pkce_required and "code_challenge" not in data:
            return
        if not data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: send 'code_challenge' (S256).")
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("Only 'code_challenge_method=S256' is supported.")
        super().validate_code_challenge(grant, redirect_uri)


class _OpenIDCode(OpenIDCode):  # type: ignore[misc]
    def __init__(self, server: _Server) -> None:
        super().__init__(require_nonce=False)
        self.server = server

    def exists_nonce(self, nonce: str, request: Request) -> bool:
        return tokens.nonce_seen(self.server.conn, request.client.client.id, nonce)

    def resolve_client_private_key(self, client: _Client) -> RSAKey:
        return self.server.options.key

    def get_client_algorithm(self, client: _Client) -> str:
        return ALGORITHM

    def get_encode_header(self, client: _Client) -> dict[str, str]:
        return {"alg": ALGORITHM, "kid": self.server.options.key.kid or ""}

    def get_client_claims(self, client: _Client) -> dict[str, Any]:
        now = int(datetime.now(UTC).timestamp())
        return {
            "iss": self.server.options.issuer,
            "aud": client.get_client_id(),
            "iat": now,
            "exp": now + ID_TOKEN_LIFETIME,
        }

    def generate_user_info(self, user: User, scope: str) -> dict[str, Any]:
        return claims.user_claims(self.server.conn, user, scope)


class _BearerValidator(BearerTokenValidator):  # type: ignore[misc]
    def __init__(self, server: _Server) -> None:
        super().__init__()
        self.server = server

    def authenticate_token(self, token_string: str) -> _Token | None:
        token = tokens.find_token(self.server.conn, token_string)
        if token is None:
            return None
        client = find_client_by_pk(self.server.conn, token.client)
        user = None if client is None else self.server.user(token.user_id, client)
        return None if user is None else _Token(token, user)


def _new_token(**_: Any) -> str:
    return secrets.token_urlsafe(32)


class _Server(AuthorizationServer):  # type: ignore[misc]
    def __init__(self, conn: Connection, options: ProviderOptions) -> None:
        super().__init__(scopes_supported=list(claims.SCOPES))
        self.conn, self.options = conn, options
        self.issued_to = ""  # the name of the client a code was issued to
        self.auth_time: datetime | None = None  # when the user of the request logged in
        self.register_token_generator(
            "default",
            BearerTokenGenerator(
                _new_token, expires_generator=int(tokens.TOKEN_LIFETIME.total_seconds())
            ),
        )
        self.register_grant(_CodeGrant, [_S256Only(required=True), _OpenIDCode(self)])

    def user(self, user_id: int, client: Client) -> User | None:
        """The user, if they exist still and may use `client`."""
        row = self.conn.execute(users.select().where(users.c.id == user_id)).first()
        if row is None:
            return None
        user = get_user(self.conn, row.name)
        return user if client.permits(user) else None

    def validate_requested_scope(self, scope: str | None) -> None:
        pass  # unknown scopes are dropped by the client, not refused

    def query_client(self, client_id: str) -> _Client | None:
        client = find_client(self.conn, client_id)
        return None if client is None else _Client(client)

    def save_token(self, token: dict[str, Any], request: Request) -> None:
        code: _Code = request.authorization_code
        tokens.save_token(
            self.conn,
            token["access_token"],
            client=request.client.client.id,
            user_id=request.user.id,
            code=code.code.id,
            scope=token.get("scope", ""),
        )

    def create_oauth2_request(self, request: Request) -> Request:
        return request

    def handle_response(self, status: int, body: Any, headers: list[tuple[str, str]]) -> Answer:
        return Answer(status, body, tuple(headers))

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        pass


class Provider:
    """The OpenID provider, for one request, in the transaction of `conn`."""

    def __init__(self, conn: Connection, options: ProviderOptions) -> None:
        self.check_issuer(options.issuer)
        self.server = _Server(conn, options)

    @staticmethod
    def check_issuer(issuer: str) -> None:
        """Raise InsecureIssuer unless the issuer is HTTPS (or HTTP on a loopback address,
        for trials): tokens and codes must not cross a network in clear."""
        if not is_secure_transport(issuer):
            raise InsecureIssuer(
                f"OpenID Connect needs HTTPS, and the issuer is {issuer}: "
                'set url = "https://…" in isidorus.toml'
            )

    def authorize(
        self, request: Request, user: User | None, auth_time: datetime | None = None
    ) -> Answer:
        """Answer an authorization request for `user` (None when not logged in), who
        logged in at `auth_time`: a redirection to the client with a code, or with an
        error the client may see.
        Raises BadAuthorizationRequest when the client cannot be told (unknown client,
        unregistered redirect URI), LoginRequired, or NotPermitted."""
        try:
            grant = self.server.get_consent_grant(request, end_user=user)
        except OAuth2Error as exc:
            if exc.redirect_uri:
                return self.server.handle_error_response(request, exc)  # type: ignore[no-any-return]
            raise BadAuthorizationRequest(
                f"the service's sign-in request was refused: {exc.description or exc.error} "
                "(its OpenID settings must match its registration: `isidorus oidc client list`)"
            ) from None
        if user is None:
            raise LoginRequired("log in first")
        client: Client = request.client.client
        if not client.permits(user):
            raise NotPermitted(
                f"{user.name} may not use {client.name}: an admin can add you to one of "
                f"its groups ({', '.join(client.allowed_groups)})"
            )
        self.server.auth_time = auth_time
        answer: Answer = self.server.create_authorization_response(request, user, grant)
        return Answer(answer.status, answer.body, answer.headers, self.server.issued_to)

    def token(self, request: Request) -> Answer:
        """Exchange a code for an ID token and an access token (or an OAuth error)."""
        answer: Answer = self.server.create_token_response(request)
        return answer

    def userinfo(self, request: Request) -> Answer:
        """The claims of the user an access token was issued for, by its scope."""
        protector = ResourceProtector()
        protector.register_token_validator(_BearerValidator(self.server))
        try:
            token: _Token = protector.validate_request(["openid"], request)
        except OAuth2Error as exc:
            status, body, headers = exc()
            return Answer(status, body, tuple(headers))
        user_info = claims.user_claims(self.server.conn, token.user, token.token.scope)
        return Answer(200, user_info, tuple(default_json_headers))


def metadata(options: ProviderOptions) -> dict[str, Any]:
    """The discovery document (OpenID Connect Discovery 1.0)."""
    return {
        "issuer": options.issuer,
        "authorization_endpoint": options.url(AUTHORIZE_PATH),
        "token_endpoint": options.url(TOKEN_PATH),
        "userinfo_endpoint": options.url(USERINFO_PATH),
        "jwks_uri": options.url(JWKS_PATH),
        "scopes_supported": list(claims.SCOPES),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [ALGORITHM],
        "token_endpoint_auth_methods_supported": [
            "client_secret_basic",
            "client_secret_post",
            "none",
        ],
        "code_challenge_methods_supported": ["S256"],
        "claims_supported": list(claims.CLAIMS),
    }
