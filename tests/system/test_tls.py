"""Certificates: the self-signed fallback, reuse while valid, reading existing ones."""

from __future__ import annotations

import datetime
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from isidorus.system.errors import HostError
from isidorus.system.tls import SelfSigned, paths, read_certificate, self_signed

NOW = datetime.datetime.now(datetime.UTC)


def load(path: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(Path(path).read_bytes())


def mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_self_signed_certificate_for_the_domain(tmp_path):
    cert = self_signed("cal.example.org", str(tmp_path / "tls"), days=90)
    assert (cert.cert_file, cert.key_file) == paths(str(tmp_path / "tls"), "cal.example.org")
    assert cert.domain == "cal.example.org" and cert.self_signed
    # measured from now, not from the module's import: a busy run takes minutes to get here
    now = datetime.datetime.now(datetime.UTC)
    assert abs(cert.not_after - (now + datetime.timedelta(days=90))) < datetime.timedelta(minutes=5)
    parsed = load(cert.cert_file)
    san = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["cal.example.org"]
    assert not parsed.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert mode(cert.key_file) == 0o600 and mode(cert.cert_file) == 0o644
    assert [n for n in os.listdir(tmp_path / "tls") if n.startswith(".")] == []


def test_an_address_gets_an_ip_san(tmp_path):
    cert = self_signed("127.0.0.1", str(tmp_path))
    san = load(cert.cert_file).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert [str(a) for a in san.value.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


def test_a_valid_certificate_is_kept(tmp_path):
    first = self_signed("cal.example.org", str(tmp_path))
    pem = Path(first.cert_file).read_bytes()
    again = self_signed("cal.example.org", str(tmp_path))
    assert again == first and Path(again.cert_file).read_bytes() == pem


@pytest.mark.parametrize(
    "spoil",
    [
        "expiring",  # valid for 20 days: renewed
        "other-domain",  # the file names the domain, the certificate another
        "other-key",  # the key is not the certificate's
        "garbage",
    ],
)
def test_a_certificate_that_will_not_do_is_replaced(tmp_path, spoil):
    d = str(tmp_path)
    cert_file, key_file = paths(d, "cal.example.org")
    if spoil == "expiring":
        SelfSigned(d, days=20).issue("cal.example.org")
    elif spoil == "other-domain":
        other = self_signed("pad.example.org", d)
        os.replace(other.cert_file, cert_file)
        os.replace(other.key_file, key_file)
    elif spoil == "other-key":
        self_signed("cal.example.org", d)
        other = self_signed("pad.example.org", d)
        os.replace(other.key_file, key_file)
    else:
        Path(cert_file).write_text("not a certificate")
        Path(key_file).write_text("nor a key")
    cert = self_signed("cal.example.org", d)
    assert cert.domain == "cal.example.org"
    assert cert.not_after - NOW > datetime.timedelta(days=800)
    assert read_certificate(cert_file, key_file) == cert


def test_a_certificate_of_an_authority_is_kept_and_not_called_self_signed(tmp_path):
    ca_key = ec.generate_private_key(ec.SECP256R1())
    key = ec.generate_private_key(ec.SECP256R1())
    ca = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test CA")])
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cal.example.org")]))
        .issuer_name(ca)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=60))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("cal.example.org")]), False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_file, key_file = paths(str(tmp_path), "cal.example.org")
    Path(cert_file).write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    Path(key_file).write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert = self_signed("cal.example.org", str(tmp_path))
    assert not cert.self_signed and cert.cert_file == cert_file
    assert load(cert_file).issuer == ca  # still the authority's


def test_reading_what_is_not_there_is_one_line(tmp_path):
    with pytest.raises(HostError) as exc:
        read_certificate(str(tmp_path / "no.crt"), str(tmp_path / "no.key"))
    assert (
        str(exc.value)
        == f"cannot read the certificate {tmp_path}/no.crt: No such file or directory"
    )
    cert = self_signed("cal.example.org", str(tmp_path))
    other = self_signed("pad.example.org", str(tmp_path))
    with pytest.raises(HostError, match="is not the key of .*: issue the certificate again"):
        read_certificate(cert.cert_file, other.key_file)


def test_an_unwritable_directory_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(HostError, match="^cannot make .*/file/tls: "):
        self_signed("cal.example.org", str(tmp_path / "file" / "tls"))
