"""The web server: the public page, the member portal, the admin area, and the single
sign-on answer for nginx (`/auth/check`).

Glossary
--------
session cookie   `isidorus_session`: a random token (HttpOnly, SameSite=Lax, Secure on
                 HTTPS), valid on the host's domain and its subdomains, so one login serves
                 every service behind nginx.
CSRF token       Per session; every form that changes something carries it.
language         English or French: the `isidorus_lang` cookie (set by `/lang/<code>`), else
                 the host's `language` setting; see `i18n.py`.
auth check       nginx's `auth_request` asks `/auth/check` whether the browser may see a
                 service: 200 (with `X-Isidorus-User`), 401 (not logged in) or 403.
REST API         `/api/v1`, for programs (`api.py`): JSON in and out, an admin's API token
                 in `Authorization: Bearer`, described by `/api/openapi.json`.
OpenID provider  `/oidc/…` and `/.well-known/openid-configuration`: services that speak
                 OpenID Connect sign members in through the same login session
                 (`oidc.py`, over `isidorus.oidc`).

Views parse the request, call one `ops` function and render the result; errors are turned
into pages (or JSON) in one place, `errors.py`.
"""
