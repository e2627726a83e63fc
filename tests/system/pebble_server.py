"""A real ACME CA of a test's own: Debian's pebble (Let's Encrypt's test server), its TLS
certificate from a CA the test makes, and Debian's pebble-challtestsrv answering its DNS
queries with 127.0.0.1 for every name, so the http-01 challenges of any domain reach the
test's nginx on `http_port`:

    with running_nginx(tmp_path) as server, running_pebble(tmp_path, server.http_port) as ca:
        Acme(tls_dir, server.prefix / "acme", "op@example.org", ca.directory, ca.ca_bundle)
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import NameOID

from tests.integration.servers import free_port, stop, wait_for_port

DAY = datetime.timedelta(days=1)


@dataclass
class Pebble:
    directory: str  # the ACME directory URL
    ca_bundle: str  # the root of pebble's own TLS certificate (its ACME endpoint's)
    management: str  # pebble's management endpoint: /roots/0, /intermediates/0 …

    def get(self, path: str) -> bytes:
        trust = ssl.create_default_context(cafile=self.ca_bundle)
        with httpx2.Client(timeout=10, verify=trust) as client:
            r = client.get(self.management + path)
            r.raise_for_status()
            return r.content

    def root(self) -> x509.Certificate:
        """The root that the certificates pebble issues chain to (new at each start)."""
        return x509.load_pem_x509_certificate(self.get("/roots/0"))

    def intermediate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.get("/intermediates/0"))

    def intermediate_key(self) -> PrivateKeyTypes:
        """What signs the certificates pebble issues (a test's CA: it hands it out)."""
        return serialization.load_pem_private_key(self.get("/intermediate-keys/0"), None)


def make_tls(directory: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate it signs for 127.0.0.1 and localhost: (ca, cert, key)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "isidorus tests' CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - DAY)
        .not_valid_after(now + DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - DAY)
        .not_valid_after(now + DAY)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        # strict verifiers (OpenSSL's X509_STRICT, which urllib3 sets) want the link to the CA
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    files[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


@contextlib.contextmanager
def running_pebble(tmp_path: Path, http_port: int, validity_days: int = 90) -> Iterator[Pebble]:
    """pebble validating http-01 challenges on `http_port` of 127.0.0.1, issuing certificates
    valid `validity_days` days; stopped at the end."""
    where = tmp_path / "pebble"
    where.mkdir()
    ca, cert, key = make_tls(where)
    acme_port, management_port, dns_port, dns_admin = (free_port() for _ in range(4))
    config = {
        "pebble": {
            "listenAddress": f"127.0.0.1:{acme_port}",
            "managementListenAddress": f"127.0.0.1:{management_port}",
            "certificate": str(cert),
            "privateKey": str(key),
            "httpPort": http_port,
            "tlsPort": free_port(),  # tls-alpn-01: not answered by isidorus
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
            "certificateValidityPeriod": validity_days * 86400,
        }
    }
    (where / "config.json").write_text(json.dumps(config))
    procs = []
    # their logs go to a file (a pipe nobody reads would fill up): pebble.log, to read
    # when a test fails
    log = open(where / "pebble.log", "ab")  # noqa: SIM115 - closed in the finally
    try:
        # every A query is answered 127.0.0.1, and no AAAA (the test's nginx is on IPv4 only)
        dns = subprocess.Popen(
            ["pebble-challtestsrv", "-dns01", f"127.0.0.1:{dns_port}", "-http01", "",
             "-https01", "", "-tlsalpn01", "", "-management", f"127.0.0.1:{dns_admin}",
             "-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        procs.append(dns)
        _wait(dns_admin, dns, "pebble-challtestsrv", where / "pebble.log")
        env = {
            **os.environ,
            "PEBBLE_VA_NOSLEEP": "1",  # validate at once, not after up to 15 s
            "PEBBLE_WFE_NONCEREJECT": "0",  # no nonce refused at random
        }
        ca_proc = subprocess.Popen(
            ["pebble", "-config", str(where / "config.json"), "-dnsserver",
             f"127.0.0.1:{dns_port}"],
            env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        procs.append(ca_proc)
        _wait(acme_port, ca_proc, "pebble", where / "pebble.log")
        _wait(management_port, ca_proc, "pebble's management endpoint", where / "pebble.log")
        yield Pebble(
            directory=f"https://127.0.0.1:{acme_port}/dir",
            ca_bundle=str(ca),
            management=f"https://127.0.0.1:{management_port}",
        )
    finally:
        stop(reversed(procs))
        log.close()


def _wait(port: int, proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
    try:
        wait_for_port(port, proc, what)
    except AssertionError as exc:
        raise AssertionError(f"{exc} {log.read_text(errors='replace')[-2000:]}") from None
