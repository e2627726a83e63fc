"""Certificates from an ACME CA for installed services, through the console script: a
real pebble checks the challenges that the test's nginx serves. An install whose CA cannot
be reached succeeds with a self-signed certificate and one warning; `service certificates
--renew` then gets the CA's, which nginx serves; a renewal that fails keeps what is there."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from isidorus.system.nginx import ACME_DIR
from tests.integration import test_services
from tests.integration.conftest import Result, assert_one_line_error
from tests.integration.servers import free_port
from tests.integration.test_services import Stack
from tests.system.pebble_server import Pebble, running_pebble

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.xdist_group("apt")]

stack = test_services.stack  # supervisord, nginx, isidorus serve, a host and its members

HELLO = """
id = "hello"
name = "Hello"
description = "Files served over HTTP: a service to publish with a certificate."
replaces = ["Nothing"]
version = "1.0"
homepage = "https://example.org/"
license = "MIT"

[source]
debian = ["python3"]

[run]
user = "isihello"
command = "/usr/bin/python3 -m http.server {port} --bind 127.0.0.1 --directory {{data_dir}}"
port = {port}

[sso]
kind = "none"

[health]
tcp = true
"""
DOMAIN = "hello.example.test"
RETRY = "`isidorus service certificates --renew`"


@pytest.fixture
def ca(stack: Stack) -> Iterator[Pebble]:
    made = not os.path.exists(ACME_DIR)  # where isidorus's sites serve the challenges from
    try:
        with running_pebble(stack.root, stack.nginx.http_port) as pebble:
            stack.env.update(
                ISIDORUS_SERVICES_TLS="acme",
                ISIDORUS_TLS_DIR=str(stack.root / "tls"),
                ISIDORUS_ACME_DIRECTORY=pebble.directory,
                ISIDORUS_ACME_EMAIL="keeper@example.org",
                ISIDORUS_ACME_CA_BUNDLE=pebble.ca_bundle,
            )
            yield pebble
    finally:
        if made:
            shutil.rmtree(ACME_DIR, ignore_errors=True)


def cli(stack: Stack, *args: str, ca_at: str | None = None, **kw) -> Result:
    """`isidorus ARGS` on the stack's host; `ca_at`: another acme_directory."""
    env = {
        **stack.env,
        **({"ISIDORUS_ACME_DIRECTORY": ca_at} if ca_at else {}),
        **kw.pop("env", {}),
    }
    return stack.run(*args, "--data-dir", stack.data_dir, env=env, **kw)


def certificates(stack: Stack, *args: str, **kw) -> tuple[Result, list[dict]]:
    r = cli(stack, "service", "certificates", "--json", *args, **kw)
    return r, json.loads(r.out) if r.out.strip() else []


def warnings(r: Result) -> list[str]:
    return [ln for ln in r.err.splitlines() if ln.startswith("warning:")]


def served(stack: Stack, trust: ssl.SSLContext) -> bytes:
    """The certificate nginx shows for DOMAIN (DER), checked with `trust`."""
    with (
        socket.create_connection(("127.0.0.1", stack.nginx.https_port), timeout=10) as raw,
        trust.wrap_socket(raw, server_hostname=DOMAIN) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return der


def der(path: Path) -> bytes:
    return x509.load_pem_x509_certificates(path.read_bytes())[0].public_bytes(
        serialization.Encoding.DER
    )


def test_a_certificate_from_the_ca_after_a_self_signed_one(stack, ca):
    (stack.services_dir / "hello.toml").write_text(HELLO.format(port=free_port()))
    closed = f"https://127.0.0.1:{free_port()}/dir"
    cert_file = stack.root / "tls" / f"{DOMAIN}.crt"

    # the CA cannot be reached: installed all the same, self-signed, and told in one line
    r = cli(stack, "service", "install", "hello", "--domain", DOMAIN, ca_at=closed)
    assert warnings(r) == [
        f"warning: {DOMAIN} keeps its self-signed certificate: no certificate for {DOMAIN} "
        f"from {closed}: the CA cannot be reached (Connection refused): check acme_directory "
        f"and this host's connection, then retry with {RETRY}"
    ]
    # the address as published: https, on the test nginx's own port
    assert r.out.startswith(f"hello 1.0 installed at https://{DOMAIN}:"), r.out
    _, found = certificates(stack)
    assert [(c["domain"], c["services"], c["issuer"]) for c in found] == [
        (DOMAIN, ["hello"], "self-signed")
    ]
    anyone = ssl.create_default_context()
    anyone.check_hostname, anyone.verify_mode = False, ssl.CERT_NONE
    assert served(stack, anyone) == der(cert_file)

    # once the CA answers: its certificate, served by nginx to browsers that trust the CA
    r, found = certificates(stack, "--renew")
    assert warnings(r) == [] and len(found) == 1
    got = found[0]
    assert got["issuer"] == "acme" and got["renewed"] and got["problem"] == ""
    assert 88 <= got["days_left"] <= 90
    leaf = x509.load_pem_x509_certificates(cert_file.read_bytes())[0]
    assert leaf.issuer == ca.intermediate().subject
    root = ca.root().public_bytes(serialization.Encoding.PEM).decode()
    assert served(stack, ssl.create_default_context(cadata=root)) == der(cert_file)
    trust = ssl.create_default_context(cadata=root)
    with httpx2.Client(timeout=10, verify=trust) as client:
        r2 = client.get(
            f"https://127.0.0.1:{stack.nginx.https_port}/",
            headers={"Host": DOMAIN},
            extensions={"sni_hostname": DOMAIN},
        )
    assert r2.status_code == 200  # the service itself, over the CA's certificate

    # nothing due: nothing renewed; the listing in words
    r, found = certificates(stack, "--renew")
    assert not found[0]["renewed"] and der(cert_file) == leaf.public_bytes(
        serialization.Encoding.DER
    )
    line = cli(stack, "service", "certificates").out.strip()
    assert line.startswith(DOMAIN) and " acme " in line and line.endswith("hello")
    audit = stack.run("audit", "--json", "--data-dir", stack.data_dir).out
    assert "service.certificate.renew" in audit

    # a renewal that fails keeps the certificate, says so, and exits 1
    r = cli(stack, "service", "certificates", "--renew", "--days", "365", ca_at=closed, check=1)
    [warning] = warnings(r)
    assert warning.startswith(f"warning: {DOMAIN} keeps its certificate, which ends on ")
    assert warning.endswith(f"retry with {RETRY}")
    assert der(cert_file) == leaf.public_bytes(serialization.Encoding.DER)

    # allowing a group publishes again without asking the CA, with the same certificate
    cli(stack, "service", "allow", "hello", "family", ca_at=closed)
    assert served(stack, ssl.create_default_context(cadata=root)) == der(cert_file)

    # without acme_email: every service command stops at once, naming it
    r = cli(stack, "service", "list", env={"ISIDORUS_ACME_EMAIL": ""}, check=False)
    assert_one_line_error(r, "acme_email", "ISIDORUS_ACME_EMAIL")
    cli(stack, "service", "remove", "hello", "--purge")


def test_the_nightly_job_renews_what_is_due(stack, ca, tmp_path):
    (stack.services_dir / "hello.toml").write_text(HELLO.format(port=free_port()))
    closed = f"https://127.0.0.1:{free_port()}/dir"
    cli(stack, "service", "install", "hello", "--domain", DOMAIN, ca_at=closed)
    assert certificates(stack)[1][0]["issuer"] == "self-signed"
    secret = tmp_path / "backup.passphrase"
    secret.write_text("the host's own backups\n")
    config = tmp_path / "isidorus.toml"
    config.write_text(f'[nightly]\npaths = ["{stack.services_dir}"]\nverify_percent = 0\n')
    env = {
        "ISIDORUS_CONFIG": str(config),
        "ISIDORUS_BACKUP_STORE": str(tmp_path / "store"),
        "ISIDORUS_BACKUP_PASSPHRASE_FILE": str(secret),
    }
    doc = json.loads(cli(stack, "nightly", "--json", env=env).out)
    step = next(s for s in doc["steps"] if s["step"] == "certificates")
    assert (step["status"], step["detail"]["renewed"]) == ("ok", [DOMAIN])
    assert certificates(stack)[1][0]["issuer"] == "acme"
    root = ca.root().public_bytes(serialization.Encoding.PEM).decode()
    trust = ssl.create_default_context(cadata=root)
    assert served(stack, trust) == der(stack.root / "tls" / f"{DOMAIN}.crt")

    # doctor: a certificate ending soon is a warning, one that has ended is critical
    cert_file = stack.root / "tls" / f"{DOMAIN}.crt"
    for days, severity, words in ((5, "warning", "ends on"), (-1, "critical", "ended on")):
        ending(cert_file, stack.root / "tls" / f"{DOMAIN}.key", days)
        found = json.loads(cli(stack, "doctor", "--json", env=env, check=1).out)["findings"]
        mine = [f for f in found if f["check"] == "certificate"]
        assert [f["severity"] for f in mine] == [severity], mine
        assert words in mine[0]["message"] and "--renew" in mine[0]["fix"]


def ending(cert_file: Path, key_file: Path, days: int) -> None:
    """Replace the domain's certificate by one of the same key that ends in `days` days."""
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, DOMAIN)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=30))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(DOMAIN)]), critical=False)
        .sign(key, hashes.SHA256())  # type: ignore[arg-type]
    )
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
