"""Certificates from an ACME certificate authority (Let's Encrypt), through http-01.

account     isidorus's key at the CA, one per directory URL: TLS_DIR/acme/account-<id>.key
            (0600), registered with the operator's email on first use
challenge   the CA fetches http://DOMAIN/.well-known/acme-challenge/TOKEN; nginx serves it
            from ACME_DIR on port 80 of every published domain, so a domain is published
            (with a self-signed certificate, which nginx needs to start its TLS server)
            before its first certificate is asked for
record      TLS_DIR/acme/<domain>.json: the serial number of the certificate the CA gave;
            a certificate whose serial matches is the issuer's to renew, any other one
            (the operator's own) is left alone
renewal     a new order, with a new key, for a certificate that ends within N days

The protocol is the `acme` library of the certbot project, used from Python rather than
running certbot itself: certbot would keep a second copy of every certificate and key under
its own directories, with its own renewal configuration (and Debian's certbot.timer
renewing on a schedule of its own), and its failures would come back as log files to read.
The library gives the CA's problem documents as exceptions, which become one line here,
and the certificates are written straight to TLS_DIR under the names nginx already reads.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import re
import ssl
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from isidorus import __version__
from isidorus.system.errors import HostError
from isidorus.system.tls import (
    RENEW_BEFORE,
    Certificate,
    _key_pem,
    _write,
    paths,
    read_certificate,
    self_signed,
)

if TYPE_CHECKING:
    from acme import client, messages
    from josepy.jwk import JWK
    from requests.adapters import HTTPAdapter

# the library (with requests and josepy) loads when a certificate is ordered, not with every
# service command that only reads certificates

LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
RENEW_DAYS = 30
TIMEOUT = 90  # seconds an order may take, the CA's validation included
RETRY = "`isidorus service certificates --renew`"


class AcmeError(HostError):
    """The CA gave no certificate: its reason, and what to do about it."""


@dataclass(frozen=True)
class Acme:
    """An issuer that asks an ACME CA. `acme_dir` is the directory nginx serves at
    /.well-known/acme-challenge/; `ca_bundle` the CA certificates that the CA's own TLS
    certificate is checked against (a private CA's), None for the system's."""

    tls_dir: str
    acme_dir: str
    email: str
    directory: str = LETS_ENCRYPT
    ca_bundle: str | None = None
    timeout: int = TIMEOUT

    # -- the Issuer protocol

    def issue(self, domain: str) -> Certificate:
        """The domain's certificate: the one there while it is not self-signed, names the
        domain and stays valid for more than 30 days (the CA's or the operator's), else a
        new one from the CA (see `renew`). Raises AcmeError when the CA gives none, HostError
        when the files cannot be written; the files there are then left as they were.
        Safe against other issuers in the same TLS_DIR (a lock)."""
        current = _valid(self.tls_dir, domain)
        if (
            current is not None
            and not current.self_signed
            and not current.expires_within(RENEW_BEFORE)
        ):
            return current
        return self.renew(domain)

    # -- renewals

    def renew(self, domain: str) -> Certificate:
        """Order a certificate for the domain now, whatever is there, through the http-01
        challenge; writes its key (0600) then the full chain (0644) at `paths()`, and the
        record that makes it this issuer's to renew. The site must be published over http on
        the domain (nginx serving ACME_DIR) and the domain must point at this host."""
        with self._lock():
            try:
                pem_key, chain = self._order(domain)
            except HostError:
                raise
            except Exception as exc:  # noqa: BLE001 - the library's and requests' errors
                raise AcmeError(self._explain(domain, exc)) from None
            cert_file, key_file = paths(self.tls_dir, domain)
            _write(key_file, pem_key, 0o600)
            _write(cert_file, chain, 0o644)
            serial = x509.load_pem_x509_certificate(chain).serial_number
            record = {"serial": f"{serial:x}", "directory": self.directory}
            _write(self._record(domain), json.dumps(record).encode() + b"\n", 0o644)
            return read_certificate(cert_file, key_file)

    def due(self, domain: str, days: int = RENEW_DAYS) -> bool:
        """Whether the domain needs a certificate from the CA: it has none that can be read,
        a self-signed one (the stand-in until the CA gives one), or this issuer's, ending
        within `days`. A certificate of another issuer (the operator's own) is never due."""
        current = _valid(self.tls_dir, domain)
        if current is None or current.self_signed:
            return True
        return self.issued(domain) and current.expires_within(datetime.timedelta(days=days))

    def issued(self, domain: str) -> bool:
        """Whether the certificate in TLS_DIR for the domain is one this issuer got."""
        return issuer_of(self.tls_dir, domain) == "acme"

    def renew_due(
        self,
        days: int = RENEW_DAYS,
        domains: Iterable[str] | None = None,
        failed: Callable[[str, AcmeError], None] | None = None,
    ) -> list[str]:
        """Renew each certificate that is `due` within `days`, among `domains` (default:
        every domain this issuer has a certificate for). Returns the domains renewed, for
        nginx to reload. One failure does not stop the others: each is handed to `failed`,
        or, without it, all of them are raised together at the end as one AcmeError (the
        certificates renewed before are kept)."""
        if domains is None:
            domains = self.recorded()
        renewed: list[str] = []
        problems: list[str] = []
        for domain in dict.fromkeys(domains):
            if not self.due(domain, days):
                continue
            try:
                self.renew(domain)
            except AcmeError as exc:
                if failed is None:
                    problems.append(str(exc))
                else:
                    failed(domain, exc)
                continue
            renewed.append(domain)
        if problems:
            done = f"renewed {', '.join(renewed)}; " if renewed else ""
            raise AcmeError(done + "; ".join(problems))
        return renewed

    def recorded(self) -> list[str]:
        """The domains this issuer got a certificate for."""
        try:
            names = os.listdir(self._records_dir())
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise HostError(f"cannot read {self._records_dir()}: {exc.strerror}") from None
        return sorted(n.removesuffix(".json") for n in names if n.endswith(".json"))

    def current(self, domain: str) -> Certificate:
        """The certificate to publish the domain with, without asking the CA: the one there
        while it names the domain and has not ended (a renewal that failed still leaves days
        to retry), else a self-signed one, until `issue` gets the CA's."""
        found = _valid(self.tls_dir, domain)
        if found is not None and not found.expires_within(datetime.timedelta(0)):
            return found
        return self_signed(domain, self.tls_dir)

    # -- the protocol, through the library

    def _order(self, domain: str) -> tuple[bytes, bytes]:
        """A new key and the full chain of its certificate, in PEM."""
        from acme import crypto_util, messages

        acme, account_key = self._client()
        key = ec.generate_private_key(ec.SECP256R1())
        pem_key = _key_pem(key)
        order = acme.new_order(crypto_util.make_csr(pem_key, [domain]))
        tokens: list[str] = []
        try:
            for authz in order.authorizations:
                if authz.body.status != messages.STATUS_VALID:  # else proven a while ago
                    tokens.append(self._answer(acme, account_key, authz, domain))
            deadline = datetime.datetime.now() + datetime.timedelta(seconds=self.timeout)
            done = acme.poll_and_finalize(order, deadline)
        finally:
            for token in tokens:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.acme_dir, token))
        return pem_key, str(done.fullchain_pem).encode()

    def _answer(
        self,
        acme: client.ClientV2,
        account_key: JWK,
        authz: messages.AuthorizationResource,
        domain: str,
    ) -> str:
        """Put the proof of an http-01 challenge where nginx serves it, and tell the CA to
        fetch it; returns the token (the proof's file name)."""
        from acme import challenges

        for chall in authz.body.challenges:
            http01 = chall.chall
            if isinstance(http01, challenges.HTTP01):
                response, validation = http01.response_and_validation(account_key)
                token = str(http01.encode("token"))
                self._put_token(token, str(validation))
                acme.answer_challenge(chall, response)
                return token
        raise AcmeError(
            f"no certificate for {domain}: {self.directory} offers no http-01 challenge, "
            "the only one isidorus answers: use another CA"
        )

    def _client(self) -> tuple[client.ClientV2, JWK]:
        """A client signed in to the CA with the account of this directory URL (registered
        on first use: registering again with the same key finds the account)."""
        from acme import client, messages
        from acme import errors as acme_errors
        from josepy.jwa import ES256
        from josepy.jwk import JWKEC

        account_key = JWKEC(key=self._account_key())
        net = client.ClientNetwork(
            account_key,
            alg=ES256,
            user_agent=f"isidorus/{__version__} acme-python",
            timeout=30,
        )
        if self.ca_bundle:
            if not os.access(self.ca_bundle, os.R_OK):
                raise AcmeError(
                    f"acme_ca_bundle {self.ca_bundle} cannot be read: name a PEM file of the "
                    "CA's root certificates, or leave it empty for the system's"
                )
            net.session.mount("https://", _trusting(self.ca_bundle))
        acme = client.ClientV2(client.ClientV2.get_directory(self.directory, net), net)
        registration = messages.NewRegistration.from_data(
            email=self.email or None, terms_of_service_agreed=True
        )
        try:
            acme.new_account(registration)
        except acme_errors.ConflictError as exc:  # the account of this key, already there
            net.account = messages.RegistrationResource(
                uri=exc.location, body=messages.Registration()
            )
        return acme, account_key

    def _account_key(self) -> ec.EllipticCurvePrivateKey:
        tag = hashlib.sha256(self.directory.encode()).hexdigest()[:16]
        path = os.path.join(self._records_dir(), f"account-{tag}.key")
        try:
            with open(path, "rb") as f:
                key = serialization.load_pem_private_key(f.read(), password=None)
        except FileNotFoundError:
            key = ec.generate_private_key(ec.SECP256R1())
            _write(path, _key_pem(key), 0o600)
            return key
        except (OSError, ValueError, TypeError) as exc:
            raise HostError(
                f"cannot read the ACME account key {path} ({exc}): move it away, and a new "
                "account is made at the next issue"
            ) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise HostError(f"{path} is not an EC key: move it away for a new account")
        return key

    def _put_token(self, token: str, validation: str) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", token):  # base64url, as RFC 8555 says
            raise AcmeError(f"the CA sent a challenge token that is not a file name: {token!r}")
        try:
            os.makedirs(self.acme_dir, mode=0o755, exist_ok=True)
        except OSError as exc:
            raise HostError(f"cannot make {self.acme_dir}: {exc.strerror}") from None
        # nginx's workers (www-data) read it: 0644
        _write(os.path.join(self.acme_dir, token), validation.encode(), 0o644)

    def _explain(self, domain: str, exc: BaseException) -> str:
        """The failure in one line: what went wrong, and what to do."""
        import requests
        from acme import errors as acme_errors
        from acme import messages

        head = f"no certificate for {domain} from {self.directory}"
        if isinstance(exc, acme_errors.ValidationError):
            why = [
                _one_line(str(c.error.detail or c.error))
                for a in exc.failed_authzrs
                for c in a.body.challenges
                if c.error is not None
            ]
            return (
                f"{head}: the CA could not check the challenge ({'; '.join(why) or 'no reason'})"
                f": make sure {domain} points at this host and its port 80 reaches nginx, "
                f"then retry with {RETRY}"
            )
        if isinstance(exc, messages.Error):
            detail = _one_line(exc.detail or str(exc))
            if exc.code == "rateLimited":
                return f"{head}: the CA's rate limit ({detail}): retry later with {RETRY}"
            if exc.code in ("rejectedIdentifier", "unsupportedIdentifier", "caa"):
                return f"{head}: the CA refuses this name ({detail}): publish on another domain"
            return f"{head}: {detail} ({exc.code or 'error'}): retry with {RETRY}"
        if isinstance(exc, acme_errors.TimeoutError):
            return f"{head}: the CA did not finish in {self.timeout} s: retry with {RETRY}"
        if isinstance(exc, requests.exceptions.SSLError):
            return (
                f"{head}: its TLS certificate cannot be verified ({_root(exc)}): for a private "
                "CA, set acme_ca_bundle to its root certificate"
            )
        if isinstance(exc, requests.exceptions.RequestException):
            return (
                f"{head}: the CA cannot be reached ({_root(exc)}): check acme_directory and "
                f"this host's connection, then retry with {RETRY}"
            )
        if isinstance(exc, OSError):
            return f"{head}: {exc.strerror or exc}"
        return f"{head}: {_one_line(str(exc)) or type(exc).__name__}: retry with {RETRY}"

    # -- files

    def _records_dir(self) -> str:
        return os.path.join(self.tls_dir, "acme")

    def _record(self, domain: str) -> str:
        return os.path.join(self._records_dir(), f"{domain}.json")

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        try:
            os.makedirs(self._records_dir(), mode=0o700, exist_ok=True)
            fd = os.open(os.path.join(self._records_dir(), ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise HostError(f"cannot use {self._records_dir()}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def issuer_of(tls_dir: str, domain: str) -> str:
    """Who issued the domain's certificate in TLS_DIR: "acme" (an ACME CA, for isidorus),
    "self-signed", "other" (the operator's own), or "none" (missing, unreadable, or not the
    key's)."""
    cert_file, key_file = paths(tls_dir, domain)
    try:
        cert = read_certificate(cert_file, key_file)
        with open(cert_file, "rb") as f:
            serial = x509.load_pem_x509_certificate(f.read()).serial_number
    except (HostError, OSError, ValueError):
        return "none"
    if cert.self_signed:
        return "self-signed"
    try:
        with open(os.path.join(tls_dir, "acme", f"{domain}.json"), encoding="utf-8") as f:
            record: Mapping[str, Any] = json.load(f)
    except (OSError, ValueError):
        return "other"
    return "acme" if record.get("serial") == f"{serial:x}" else "other"


def _valid(tls_dir: str, domain: str) -> Certificate | None:
    """The domain's certificate when it can be read, matches its key and names the domain."""
    cert_file, key_file = paths(tls_dir, domain)
    try:
        cert = read_certificate(cert_file, key_file)
        with open(cert_file, "rb") as f:
            parsed = x509.load_pem_x509_certificate(f.read())
        san = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (HostError, OSError, ValueError, x509.ExtensionNotFound):
        return None
    return cert if domain in san.get_values_for_type(x509.DNSName) else None


def _trusting(bundle: str) -> HTTPAdapter:
    """A transport that checks the CA's TLS certificate against a bundle of the operator's
    (a private CA's, like pebble's test CA) instead of the system's CAs, for this client
    only: it wins over REQUESTS_CA_BUNDLE and CURL_CA_BUNDLE, which requests reads from the
    environment."""
    import requests
    from requests.adapters import HTTPAdapter

    class Trusting(HTTPAdapter):
        def send(
            self,
            request: requests.PreparedRequest,
            stream: bool = False,
            timeout: None | float | tuple[float, float] | tuple[float, None] = None,
            verify: bool | str = True,
            cert: None | bytes | str | tuple[bytes | str, bytes | str] = None,
            proxies: Mapping[str, str] | None = None,
        ) -> requests.Response:
            return super().send(
                request,
                stream=stream,
                timeout=timeout,
                verify=bundle if verify is not False else False,
                cert=cert,
                proxies=proxies,
            )

    return Trusting()


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _root(exc: BaseException) -> str:
    """The innermost cause of a requests error, which says what happened (refused, no such
    host, certificate verify failed) in fewer words than the wrappers around it."""
    seen = {id(exc)}
    while (inner := exc.__cause__ or exc.__context__) is not None and id(inner) not in seen:
        seen.add(id(inner))
        exc = inner
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return _one_line(str(exc))[:200] or type(exc).__name__
