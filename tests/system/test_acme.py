"""Certificates from an ACME CA: a real pebble checks http-01 challenges that a real nginx
serves, the certificate chains to pebble's root and nginx serves it; renewals of the ones
near their end; failures that leave the self-signed certificate in place."""

from __future__ import annotations

import datetime
import os
import socket
import ssl
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from isidorus.system.acme import Acme, AcmeError, issuer_of
from isidorus.system.nginx import Nginx, Site
from isidorus.system.tls import Certificate, paths, read_certificate
from tests.integration.servers import free_port
from tests.system.nginx_server import NginxServer, running_nginx
from tests.system.pebble_server import Pebble, running_pebble

pytestmark = pytest.mark.slow

AUTH = "http://127.0.0.1:8080/auth/check"
LOGIN = "https://portal.example.org/login"
NOW = datetime.datetime.now(datetime.UTC)


@dataclass
class Stack:
    server: NginxServer
    nginx: Nginx
    ca: Pebble
    acme: Acme
    tls_dir: Path

    def publish(self, domain: str, cert: Certificate) -> None:
        service = domain.split(".")[0]
        self.nginx.publish(
            Site(
                service=service,
                domain=domain,
                path="/",
                port=free_port(),
                sso="none",
                sso_header=None,
                allow=(),
                tls=cert,
                listen_http=self.server.http_port,
                listen_https=self.server.https_port,
            )  # fmt: skip
        )

    def first_publish(self, domain: str) -> Certificate:
        """Published as an install does: with what the issuer has now (self-signed)."""
        cert = self.acme.current(domain)
        self.publish(domain, cert)
        return cert


@pytest.fixture
def stack(tmp_path) -> Iterator[Stack]:
    with running_nginx(tmp_path) as server, running_pebble(tmp_path, server.http_port) as ca:
        acme_dir = server.prefix / "acme"
        acme = Acme(
            str(tmp_path / "tls"), str(acme_dir), "keeper@example.org", ca.directory, ca.ca_bundle
        )
        yield Stack(server, server.nginx(AUTH, LOGIN), ca, acme, tmp_path / "tls")


def load(path: str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(Path(path).read_bytes())


def served(stack: Stack, domain: str) -> bytes:
    """The certificate nginx shows to a client that asks for `domain` and trusts only
    pebble's root (DER); the handshake fails unless it chains to that root and names it."""
    trust = ssl.create_default_context(
        cadata=stack.ca.root().public_bytes(serialization.Encoding.PEM).decode()
    )
    with (
        socket.create_connection(("127.0.0.1", stack.server.https_port), timeout=10) as raw,
        trust.wrap_socket(raw, server_hostname=domain) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return der


def test_a_certificate_from_the_ca_through_the_challenge_nginx_serves(stack):
    domain = "cal.example.test"
    first = stack.first_publish(domain)
    assert first.self_signed and issuer_of(str(stack.tls_dir), domain) == "self-signed"
    assert stack.acme.due(domain)

    cert = stack.acme.issue(domain)
    assert (cert.cert_file, cert.key_file) == paths(str(stack.tls_dir), domain)
    assert cert.domain == domain and not cert.self_signed
    assert stat.S_IMODE(os.stat(cert.key_file).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(cert.cert_file).st_mode) == 0o644
    assert issuer_of(str(stack.tls_dir), domain) == "acme" and not stack.acme.due(domain)
    leaf, *chain = load(cert.cert_file)
    intermediate, root = stack.ca.intermediate(), stack.ca.root()
    assert leaf.issuer == intermediate.subject
    assert leaf.issuer.rfc4514_string().startswith("CN=Pebble Intermediate CA")
    leaf.verify_directly_issued_by(intermediate)
    intermediate.verify_directly_issued_by(root)
    assert chain and chain[0] == intermediate  # the full chain, as nginx must send it
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [domain]
    assert os.listdir(stack.acme.acme_dir) == []  # the challenge's proof is gone

    # republished (a reload would do: the same paths), nginx serves it to browsers that
    # trust the CA
    stack.publish(domain, cert)
    assert served(stack, domain) == leaf.public_bytes(serialization.Encoding.DER)

    # kept while valid: no new order; a second domain uses the same account
    assert stack.acme.issue(domain) == cert and load(cert.cert_file)[0] == leaf
    stack.first_publish("pad.example.test")
    assert not stack.acme.issue("pad.example.test").self_signed
    keys = [n for n in os.listdir(stack.tls_dir / "acme") if n.startswith("account-")]
    assert len(keys) == 1
    assert stat.S_IMODE(os.stat(stack.tls_dir / "acme" / keys[0]).st_mode) == 0o600
    assert stack.acme.recorded() == ["cal.example.test", "pad.example.test"]


def resign(
    stack: Stack, cert_file: str, not_after: datetime.datetime, serial: int | None = None
) -> None:
    """The certificate in `cert_file`, signed again by pebble's intermediate to end at
    `not_after` (with the same serial unless told): it looks near its end to every reader."""
    leaf, *chain = load(cert_file)
    key = stack.ca.intermediate_key()
    assert isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey)
    builder = (
        x509.CertificateBuilder()
        .subject_name(leaf.subject)
        .issuer_name(leaf.issuer)
        .public_key(leaf.public_key())
        .serial_number(serial or leaf.serial_number)
        .not_valid_before(leaf.not_valid_before_utc)
        .not_valid_after(not_after)
    )
    for ext in leaf.extensions:
        builder = builder.add_extension(ext.value, ext.critical)
    again = builder.sign(key, hashes.SHA256())
    Path(cert_file).write_bytes(
        b"".join(c.public_bytes(serialization.Encoding.PEM) for c in [again, *chain])
    )


def test_renew_due_renews_what_nears_its_end_and_leaves_the_rest(stack):
    for domain in ("near.example.test", "far.example.test", "own.example.test"):
        stack.first_publish(domain)
        stack.acme.issue(domain)
    near = paths(str(stack.tls_dir), "near.example.test")
    far = paths(str(stack.tls_dir), "far.example.test")
    own = paths(str(stack.tls_dir), "own.example.test")
    resign(stack, near[0], NOW + datetime.timedelta(days=5))
    # the operator's own certificate, near its end too: not the issuer's to replace
    resign(stack, own[0], NOW + datetime.timedelta(days=5), serial=x509.random_serial_number())
    assert issuer_of(str(stack.tls_dir), "own.example.test") == "other"
    before = {f: Path(f).read_bytes() for f in (*far, *own)}
    old_serial = load(near[0])[0].serial_number

    assert stack.acme.due("near.example.test", days=30)
    assert not stack.acme.due("near.example.test", days=3)
    assert stack.acme.renew_due(days=3) == []
    assert stack.acme.renew_due(days=30) == ["near.example.test"]

    renewed = read_certificate(*near)
    assert load(near[0])[0].serial_number != old_serial
    assert renewed.not_after - NOW > datetime.timedelta(days=80)
    assert issuer_of(str(stack.tls_dir), "near.example.test") == "acme"
    assert {f: Path(f).read_bytes() for f in (*far, *own)} == before
    assert stack.acme.renew_due(days=30) == []

    # nginx, reloaded, serves the renewed one
    stack.publish("near.example.test", renewed)
    assert served(stack, "near.example.test") == load(near[0])[0].public_bytes(
        serialization.Encoding.DER
    )


def test_a_domain_the_ca_cannot_check_keeps_its_self_signed_certificate(stack):
    # pebble's DNS sends it here, but nginx has no site for it: the challenge is a 404
    domain = "lost.example.test"
    first = stack.acme.current(domain)
    kept = {f: Path(f).read_bytes() for f in (first.cert_file, first.key_file)}
    with pytest.raises(AcmeError) as exc:
        stack.acme.issue(domain)
    message = str(exc.value)
    assert "\n" not in message
    assert message.startswith(f"no certificate for {domain} from {stack.ca.directory}: the CA")
    assert "404" in message and "`isidorus service certificates --renew`" in message
    assert {f: Path(f).read_bytes() for f in kept} == kept
    assert issuer_of(str(stack.tls_dir), domain) == "self-signed"
    assert os.listdir(stack.acme.acme_dir) == []

    # renewals go on past it, and say why it failed
    stack.first_publish("cal.example.test")
    failures: list[tuple[str, str]] = []
    got = stack.acme.renew_due(
        domains=[domain, "cal.example.test"], failed=lambda d, e: failures.append((d, str(e)))
    )
    assert got == ["cal.example.test"] and [d for d, _ in failures] == [domain]
    # without `failed`: the others first, then one error naming every failure
    stack.first_publish("pad.example.test")
    with pytest.raises(AcmeError, match=r"^renewed pad\.example\.test; no certificate for lost"):
        stack.acme.renew_due(domains=[domain, "cal.example.test", "pad.example.test"])
    assert issuer_of(str(stack.tls_dir), "pad.example.test") == "acme"


def test_a_ca_that_cannot_be_reached_or_trusted(tmp_path):
    closed = f"https://127.0.0.1:{free_port()}/dir"
    acme = Acme(str(tmp_path / "tls"), str(tmp_path / "acme"), "keeper@example.org", closed)
    with pytest.raises(AcmeError) as exc:
        acme.issue("cal.example.test")
    assert str(exc.value) == (
        f"no certificate for cal.example.test from {closed}: the CA cannot be reached "
        "(Connection refused): check acme_directory and this host's connection, then retry "
        "with `isidorus service certificates --renew`"
    )
    with running_pebble(tmp_path, free_port()) as ca:
        untrusted = Acme(
            str(tmp_path / "tls"), str(tmp_path / "acme"), "k@example.org", ca.directory
        )
        with pytest.raises(AcmeError, match="set acme_ca_bundle to its root certificate$") as exc:
            untrusted.issue("cal.example.test")
        assert "certificate verify failed" in str(exc.value)
        missing = Acme(
            str(tmp_path / "tls"), str(tmp_path / "acme"), "k@example.org", ca.directory,
            str(tmp_path / "nowhere.pem"),
        )  # fmt: skip
        with pytest.raises(AcmeError, match="acme_ca_bundle .*nowhere.pem cannot be read"):
            missing.issue("cal.example.test")
