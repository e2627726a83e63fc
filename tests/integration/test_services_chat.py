"""Chat servers installed for real, whose members sign in with the host's password, checked
against its LDAP directory (a real slapd): Prosody (XMPP, here through BOSH behind nginx as
a web client would) and Matrix Synapse (its client API behind nginx, as Element would).
On the stack of test_services (supervisord, nginx, isidorus serve)."""

from __future__ import annotations

import base64
import re

import httpx2

from tests.integration import test_services
from tests.integration.test_services import DOMAIN, PASSWORDS, Stack, listed, wait_until_bindable
from tests.integration.test_services_fastcgi import client, installed_with_directory

pytestmark = test_services.pytestmark
stack = test_services.stack  # the same stack, fixture and all

BOSH = "http://jabber.org/protocol/httpbind"
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"


def xmpp_sign_in(stack: Stack, chat: str, name: str, password: str) -> str:
    """Open a BOSH session with the chat server and authenticate with SASL PLAIN, as a web
    client does; what the server answers the authentication with."""
    with client(stack, chat) as web:

        def bosh(body: str) -> str:
            r = web.post("/http-bind", content=body, headers={"Content-Type": "text/xml"})
            assert r.status_code == 200, r.text
            return r.text

        opened = bosh(
            f"<body rid='1000' to='{chat}' xml:lang='en' wait='10' hold='1' ver='1.6' "
            f"xmlns='{BOSH}' xmlns:xmpp='urn:xmpp:xbosh' xmpp:version='1.0'/>"
        )
        sid = re.search(r"sid=['\"]([^'\"]+)['\"]", opened)
        assert sid is not None and "<mechanism>PLAIN</mechanism>" in opened, opened
        token = base64.b64encode(f"\0{name}\0{password}".encode()).decode()
        return bosh(
            f"<body rid='1001' sid='{sid[1]}' xmlns='{BOSH}'>"
            f"<auth xmlns='{SASL}' mechanism='PLAIN'>{token}</auth></body>"
        )


def test_prosody_members_sign_in_with_their_host_password(stack, tmp_path):
    wait_until_bindable(5280)  # its web side's port (its manifest)
    with installed_with_directory(stack, tmp_path, "prosody"):
        chat = f"prosody.{DOMAIN}"
        answer = xmpp_sign_in(stack, chat, "alice", PASSWORDS["alice"])
        assert "<success" in answer, answer
        answer = xmpp_sign_in(stack, chat, "alice", "not her password")
        assert "<failure" in answer and "not-authorized" in answer, answer
        answer = xmpp_sign_in(stack, chat, "nobody", PASSWORDS["alice"])
        assert "<failure" in answer, answer
        # a member disabled in isidorus is out of XMPP too (the directory follows)
        stack.isidorus("user", "disable", "alice")
        assert "<failure" in xmpp_sign_in(stack, chat, "alice", PASSWORDS["alice"])

        stack.isidorus("service", "remove", "prosody", "--purge")
        assert listed(stack) == {}
        assert stack.nginx.get(chat, "/http-bind").status_code == 404


def matrix_sign_in(stack: Stack, server: str, name: str, password: str) -> httpx2.Response:
    """Matrix's password login, as Element sends it."""
    with client(stack, server) as web:
        return web.post(
            "/_matrix/client/v3/login",
            json={
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": name},
                "password": password,
            },
        )


def test_synapse_members_sign_in_with_their_host_password(stack, tmp_path):
    wait_until_bindable(8008)  # its port (its manifest)
    with installed_with_directory(stack, tmp_path, "synapse"):
        server = f"synapse.{DOMAIN}"
        r = matrix_sign_in(stack, server, "alice", PASSWORDS["alice"])
        assert r.status_code == 200, r.text
        assert r.json()["user_id"] == f"@alice:{server}" and r.json()["access_token"]
        r = matrix_sign_in(stack, server, "alice", "not her password")
        assert (r.status_code, r.json()["errcode"]) == (403, "M_FORBIDDEN"), r.text
        # its identity, a key made at its first start, is kept with its data
        key = stack.root / "data" / "synapse" / "keys" / "signing.key"
        assert key.read_text().startswith("ed25519 ")

        stack.isidorus("service", "remove", "synapse", "--purge")
        assert listed(stack) == {} and not key.exists()
