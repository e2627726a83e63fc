"""The provider's signing key: RSA 2048, made on first use, kept in DATA_DIR.

The key is written with mode 0600 under a temporary name and then linked to its final
name, which fails if another process made one meanwhile: every process ends up with the
same key. Its `kid` is its RFC 7638 thumbprint, so a new key gets a new kid.
"""

from __future__ import annotations

import contextlib
import os

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc.jwk import RSAKey

KEY_NAME = "oidc-signing-key.pem"
ALGORITHM = "RS256"


def _generate(path: str) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):  # another process was first: use its key
            os.link(tmp, path)
    finally:
        os.unlink(tmp)


def signing_key(data_dir: str) -> RSAKey:
    """The host's signing key, made the first time it is needed."""
    path = os.path.join(data_dir, KEY_NAME)
    if not os.path.exists(path):
        _generate(path)
    with open(path, "rb") as f:
        key = RSAKey.import_key(f.read())
    return RSAKey.import_key(
        key.as_dict(private=True), {"kid": key.thumbprint(), "use": "sig", "alg": ALGORITHM}
    )


def jwks(key: RSAKey) -> dict[str, object]:
    """The public half, as the JWK Set services fetch to check ID tokens."""
    return {"keys": [key.as_dict(private=False)]}
