"""Certificates for the sites nginx serves.

certificate   a PEM certificate and its private key, for one domain: DIR/<domain>.crt
              (mode 0644) and DIR/<domain>.key (0600)
issuer        what makes one: `SelfSigned`, or `acme.Acme` (a CA's). Every issuer writes the
              same two files, so nginx's configuration names the same paths whoever issued
              the certificate, and a renewal or a change of issuer needs a reload, not a new
              configuration.

A certificate is kept while it stays valid for more than `RENEW_BEFORE`; past that, the
issuer makes a new one.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import tempfile
from dataclasses import dataclass
from typing import Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from isidorus.system.errors import HostError

RENEW_BEFORE = datetime.timedelta(days=30)
DEFAULT_DAYS = 825  # the longest validity browsers accept for a server certificate


@dataclass(frozen=True)
class Certificate:
    cert_file: str
    key_file: str
    domain: str  # the first name the certificate is for (its first SAN)
    not_after: datetime.datetime  # timezone-aware, UTC
    self_signed: bool

    def expires_within(
        self, delta: datetime.timedelta, now: datetime.datetime | None = None
    ) -> bool:
        """Whether it is no longer valid `delta` from now (doctor warns, issuers renew)."""
        now = now or datetime.datetime.now(datetime.UTC)
        return self.not_after - now <= delta


class Issuer(Protocol):
    """Gives a domain its certificate: the one already there while it stays valid for more
    than RENEW_BEFORE, else a new one, written with `paths()`. Raises HostError."""

    def issue(self, domain: str) -> Certificate: ...


def paths(directory: str, domain: str) -> tuple[str, str]:
    """Where a domain's certificate and key live: the same for every issuer."""
    return os.path.join(directory, f"{domain}.crt"), os.path.join(directory, f"{domain}.key")


class SelfSigned:
    """An issuer that signs its own certificates: browsers warn once, the traffic is
    encrypted all the same. The fallback until the host's domains can have real ones."""

    def __init__(self, directory: str, days: int = DEFAULT_DAYS) -> None:
        self.directory = directory
        self.days = days

    def issue(self, domain: str) -> Certificate:
        cert_file, key_file = paths(self.directory, domain)
        current = _usable(cert_file, key_file, domain)
        if current is not None:
            return current
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _sign(key, domain, self.days)
        try:
            os.makedirs(self.directory, mode=0o755, exist_ok=True)
        except OSError as exc:
            raise HostError(f"cannot make {self.directory}: {_reason(exc)}") from None
        # the key first: a crash in between leaves a pair that does not match, which the
        # next call replaces, never a certificate whose key is lost
        _write(key_file, _key_pem(key), 0o600)
        _write(cert_file, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        return read_certificate(cert_file, key_file)


def self_signed(domain: str, directory: str, days: int = DEFAULT_DAYS) -> Certificate:
    """The certificate of `domain` in `directory`: the one there when it names the domain,
    matches its key and stays valid for more than 30 days (whoever issued it), else a new
    self-signed one (EC P-256, valid `days` days), written atomically. Raises HostError when
    the files cannot be written."""
    return SelfSigned(directory, days).issue(domain)


def read_certificate(cert_file: str, key_file: str) -> Certificate:
    """An existing certificate and its key; HostError when either cannot be read or they
    do not belong together."""
    return _read(cert_file, key_file)[0]


def _read(cert_file: str, key_file: str) -> tuple[Certificate, list[str]]:
    """The certificate, and every name it is for."""
    try:
        with open(cert_file, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
    except (OSError, ValueError) as exc:
        raise HostError(f"cannot read the certificate {cert_file}: {_reason(exc)}") from None
    try:
        with open(key_file, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise HostError(f"cannot read the private key {key_file}: {_reason(exc)}") from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, public) != cert.public_key().public_bytes(der, public):
        raise HostError(f"{key_file} is not the key of {cert_file}: issue the certificate again")
    names = _names(cert)
    found = Certificate(
        cert_file=cert_file,
        key_file=key_file,
        domain=names[0] if names else "",
        not_after=cert.not_valid_after_utc,
        self_signed=_signed_by_itself(cert),
    )
    return found, names


def _usable(cert_file: str, key_file: str, domain: str) -> Certificate | None:
    if not (os.path.exists(cert_file) and os.path.exists(key_file)):
        return None
    try:
        cert, names = _read(cert_file, key_file)
    except HostError:
        return None  # damaged or mismatched: replaced by a new one
    if domain not in names or cert.expires_within(RENEW_BEFORE):
        return None
    return cert


def _sign(key: ec.EllipticCurvePrivateKey, domain: str, days: int) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)])
    try:
        san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(domain))
    except ValueError:
        san = x509.DNSName(domain)
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))  # clocks a little behind
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([san]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def _names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(n.value) for n in san if isinstance(n, x509.DNSName | x509.IPAddress)]


def _signed_by_itself(cert: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: str, data: bytes, mode: int) -> None:
    """Replace `path` atomically; the file has `mode` from its first byte on."""
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise HostError(f"cannot write {path}: {exc.strerror or exc}") from None
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _reason(exc: Exception) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
