"""OpenID Connect: isidorus signs members in to the services that speak it.

Glossary
--------
client          A service registered with the provider (`isidorus oidc client add`): a
                random client id, its exact redirect URIs, the groups it is open to
                (none = every member) and, for a confidential client, the SHA-256 of its
                secret. A public client has no secret and must prove itself with PKCE.
issuer          The provider's base URL: `url` in isidorus.toml, else https://DOMAIN.
code            What the authorization endpoint hands the service through the browser:
                single use, bound to the client, redirect URI and PKCE challenge
                (S256 only), valid for 10 minutes; only its hash is stored.
access token    What the token endpoint returns with the ID token, for the userinfo
                endpoint; valid for an hour; only its hash is stored. No refresh tokens.
ID token        A JWT signed RS256 with the host's key (DATA_DIR/oidc-signing-key.pem),
                published in the JWKS under its thumbprint as `kid`.
subject         `sub`: a random identifier made the first time a user signs in to any
                service; it never changes and is never given to another user.

The protocol is authlib's server (authorization code grant, OpenID Connect code flow,
PKCE); this package feeds it the state database through a Connection and knows nothing of
HTTP frameworks or the command line.
"""
