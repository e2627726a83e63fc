"""The web server: the public page, the member portal, the admin area, and the single
sign-on answer for nginx (`/auth/check`).

Glossary
--------
session cookie   `isidorus_session`: a random token (HttpOnly, SameSite=Lax, Secure on
                 HTTPS), valid on the host's domain and its subdomains, so one login serves
                 every service behind nginx.
CSRF token       Per session; every form that changes something carries it.
auth check       nginx's `auth_request` asks `/auth/check` whether the browser may see a
                 service: 200 (with `X-Isidorus-User`), 401 (not logged in) or 403.
OpenID provider  `/oidc/…` and `/.well-known/openid-configuration`: services that speak
                 OpenID Connect sign members in through the same login session
                 (`oidc.py`, over `isidorus.oidc`).

Views parse the request, call one `ops` function and render the result; errors are turned
into pages (or JSON) in one place, `errors.py`.
"""
