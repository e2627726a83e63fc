"""The OpenID Connect provider's endpoints: discovery, JWKS, authorization, token and
userinfo. authlib has no Starlette integration: this is the small adapter, from a
Starlette request to the provider's `Request` and from its `Answer` back to a response.

The authorization endpoint uses the login session: not logged in, it sends the browser to
`/login?next=<the authorization URL>`; the host's own services ask no consent. The token
and userinfo endpoints are called by the services, server to server: they carry no
cookie nor CSRF token, the client authenticates itself instead (secret, PKCE, bearer
token).
"""

from __future__ import annotations

from urllib.parse import quote, urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from isidorus.oidc.errors import LoginRequired
from isidorus.oidc.provider import (
    AUTHORIZE_PATH,
    DISCOVERY_PATH,
    JWKS_PATH,
    TOKEN_PATH,
    USERINFO_PATH,
)
from isidorus.ops import oidc as ops
from isidorus.web.base import Views


class Oidc(Views):
    _options: ops.ProviderOptions | None = None

    def routes(self) -> list[Route]:
        return [
            Route(DISCOVERY_PATH, self.discovery),
            Route(JWKS_PATH, self.jwks),
            Route(AUTHORIZE_PATH, self.authorize, methods=["GET", "POST"]),
            Route(TOKEN_PATH, self.token, methods=["POST"]),
            Route(USERINFO_PATH, self.userinfo, methods=["GET", "POST"]),
        ]

    def options(self) -> ops.ProviderOptions:
        # read once: the issuer from isidorus.toml, the key made on first use
        if self._options is None:
            self._options = ops.provider_options(self.host.data_dir)
        return self._options

    async def provider_request(self, request: Request) -> ops.Request:
        """The provider's view of a request: its URL as the issuer sees it (behind nginx,
        uvicorn sees http://127.0.0.1), the headers, query and form."""
        form: list[tuple[str, str]] = []
        if request.method == "POST":
            form = [(k, v) for k, v in (await request.form()).multi_items() if isinstance(v, str)]
        query = request.url.query
        return ops.Request(
            request.method,
            self.options().issuer + request.url.path + (f"?{query}" if query else ""),
            request.headers,
            request.query_params.multi_items(),
            form,
        )

    async def discovery(self, request: Request) -> Response:
        return JSONResponse(ops.discovery(self.options()))

    async def jwks(self, request: Request) -> Response:
        return JSONResponse(ops.jwks(self.options()))

    async def authorize(self, request: Request) -> Response:
        if request.method == "POST":
            # a request posted by a service: the same as its GET, which survives a login
            form = [(k, v) for k, v in (await request.form()).multi_items() if isinstance(v, str)]
            params = [*request.query_params.multi_items(), *form]
            return RedirectResponse(f"{AUTHORIZE_PATH}?{urlencode(params)}", status_code=303)
        try:
            answer = ops.authorize(
                self.db,
                self.options(),
                await self.provider_request(request),
                self.session(request),
            )
        except LoginRequired:
            here = f"{request.url.path}?{request.url.query}"
            return RedirectResponse(f"/login?next={quote(here, safe='')}", status_code=303)
        return send(answer)

    async def token(self, request: Request) -> Response:
        return send(ops.token(self.db, self.options(), await self.provider_request(request)))

    async def userinfo(self, request: Request) -> Response:
        return send(ops.userinfo(self.db, self.options(), await self.provider_request(request)))


def send(answer: ops.Answer) -> Response:
    headers = dict(answer.headers)
    if isinstance(answer.body, dict):
        return JSONResponse(answer.body, status_code=answer.status, headers=headers)
    return Response(answer.body, status_code=answer.status, headers=headers)
