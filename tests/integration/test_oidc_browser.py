"""A sign-in through a real browser: Chromium, driven over the DevTools protocol, goes
from a service to `isidorus serve`'s authorization endpoint, logs in on the form, and is
sent back to the service with a code, which the service exchanges. Browsers hold the
redirections that follow a form to the page's CSP `form-action`: this is where a policy
that forgot the service's origin would show."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import select
import shutil
import subprocess
import sys
import textwrap
import time
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx2
import pytest

from tests.integration.test_nginx_sso import free_port, wait_for_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PASSWORD = "winter apples keep well"
SERVICE = textwrap.dedent("""
    import http.server, sys
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path.startswith("/cb?"):
                print(self.path, flush=True)
            self.send_response(200)
            self.send_header("Content-Length", "7")
            self.end_headers()
            self.wfile.write(b"welcome")
        def log_message(self, *a):
            pass
    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
""")


class DevTools:
    """Chromium's DevTools protocol over the pipes of --remote-debugging-pipe (fd 3 in,
    fd 4 out, NUL-terminated JSON), attached to its first page."""

    def __init__(self, profile: str) -> None:
        to_chrome, self._out = os.pipe()
        self._in, from_chrome = os.pipe()

        def fds() -> None:
            os.dup2(to_chrome, 3)
            os.dup2(from_chrome, 4)

        assert CHROMIUM
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--remote-debugging-pipe", f"--user-data-dir={profile}", "about:blank"],
            preexec_fn=fds, close_fds=False,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        os.close(to_chrome)
        os.close(from_chrome)
        self.buf, self.next_id, self.events = b"", 0, []
        page = next(t for t in self.call("Target.getTargets")["targetInfos"] if t["type"] == "page")
        attached = self.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)
        self.session = attached["sessionId"]
        for domain in ("Page", "Log", "Runtime"):
            self.call(f"{domain}.enable", session=True)

    def call(self, method: str, session: bool = False, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        os.write(self._out, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + 20
        while True:
            while b"\0" not in self.buf:
                left = deadline - time.monotonic()
                assert left > 0 and select.select([self._in], [], [], left)[0], (
                    f"{method}: no answer"
                )
                chunk = os.read(self._in, 1 << 16)
                assert chunk, "chromium exited"
                self.buf += chunk
            raw, self.buf = self.buf.split(b"\0", 1)
            answer = json.loads(raw)
            if answer.get("id") == self.next_id:
                assert "error" not in answer, answer
                result: dict[str, Any] = answer["result"]
                return result
            self.events.append(answer)

    def evaluate(self, expression: str) -> Any:
        return self.call("Runtime.evaluate", session=True, expression=expression)["result"].get(
            "value"
        )

    def wait_for(self, expression: str, what: str) -> None:
        for _ in range(200):  # 10 s at most
            if self.evaluate(expression):
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}: at {self.evaluate('location.href')}")

    def messages(self) -> list[str]:
        return [
            e["params"]["entry"]["text"] for e in self.events if e.get("method") == "Log.entryAdded"
        ]

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
        os.close(self._out)
        os.close(self._in)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (scripts/test installs it)")
def test_a_sign_in_through_a_real_browser(run, tmp_path):
    home = tmp_path / "host"
    run("init", "--data-dir", home, "--password-stdin", input="the keeper's passphrase\n")
    run("user", "add", "alice", "--email", "alice@example.org", "--password-stdin",
        "--data-dir", home, input=PASSWORD + "\n")  # fmt: skip
    web_port, service_port = free_port(), free_port()
    with open(home / "isidorus.toml", "a") as f:
        f.write(f'url = "http://localhost:{web_port}"\n')
    callback = f"http://127.0.0.1:{service_port}/cb"
    added = run("oidc", "client", "add", "svc", "--redirect-uri", callback, "--json",
                "--data-dir", home)  # fmt: skip
    client = json.loads(added.out)

    web = run.popen("serve", "--data-dir", home, "--listen", f"127.0.0.1:{web_port}")
    service = subprocess.Popen(
        [sys.executable, "-c", SERVICE, str(service_port)], stdout=subprocess.PIPE, text=True
    )
    browser = None
    try:
        wait_for_port(web_port, web, "isidorus serve")
        wait_for_port(service_port, service, "the service")  # type: ignore[arg-type]
        browser = DevTools(str(tmp_path / "profile"))
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
        authorize = f"http://localhost:{web_port}/oidc/authorize?" + urlencode(
            {
                "response_type": "code",
                "client_id": client["client_id"],
                "redirect_uri": callback,
                "scope": "openid profile",
                "state": "xyzzy",
                "code_challenge": challenge.rstrip(b"=").decode(),
                "code_challenge_method": "S256",
            }
        )
        browser.call("Page.navigate", session=True, url=authorize)
        browser.wait_for("location.pathname == '/login' && !!document.forms[0]", "the login form")
        browser.evaluate(
            "document.getElementById('name').value = 'alice';"
            f"document.getElementById('password').value = {json.dumps(PASSWORD)};"
            "document.forms[0].submit()"
        )
        browser.wait_for(f"location.href.startsWith({json.dumps(callback)})", "the service")
        assert not [m for m in browser.messages() if "Content Security Policy" in m]
        service.terminate()
        arrived = urlsplit(service.communicate(timeout=10)[0].splitlines()[0])
        query = parse_qs(arrived.query)
        assert query["state"] == ["xyzzy"]

        r = httpx2.post(
            f"http://127.0.0.1:{web_port}/oidc/token",
            data={
                "grant_type": "authorization_code",
                "code": query["code"][0],
                "redirect_uri": callback,
                "code_verifier": verifier,
            },
            auth=(client["client_id"], client["client_secret"]),
            timeout=10,
        )
        assert r.status_code == 200, r.text
        payload = r.json()["id_token"].split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        assert claims["preferred_username"] == "alice"
        assert claims["iss"] == f"http://localhost:{web_port}"
    finally:
        if browser is not None:
            browser.close()
        for p in (service, web):
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)
        if service.stdout is not None:
            service.stdout.close()
