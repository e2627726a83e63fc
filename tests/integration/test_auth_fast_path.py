"""`/auth/check` as nginx asks it, over real sockets to the real `isidorus serve`: the fast
path (web/fast_path.py) answers as the app does, keeps connections and their order, and
hands everything else to the app on the same connection."""

from __future__ import annotations

import base64
import hashlib
import re
import signal
import socket
import sqlite3
import threading
import time
from dataclasses import dataclass

import httpx2
import pytest

from tests.integration.servers import free_port, stop, wait_for_port

ADMIN_PASSWORD = "the keeper's passphrase"
PASSWORDS = {"alice": "winter apples keep well", "bob": "summer pears ripen fast"}
COOKIE = "isidorus_session"


@dataclass
class Host:
    run: object
    home: object
    port: int
    web: object

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def host(run, tmp_path):
    home = tmp_path / "host"
    run("init", "--data-dir", home, "--password-stdin", input=ADMIN_PASSWORD + "\n")
    for name, password in PASSWORDS.items():
        run("user", "add", name, "--email", f"{name}@example.org", "--password-stdin",
            "--data-dir", home, input=password + "\n")  # fmt: skip
    run("group", "add", "family", "--data-dir", home)
    run("group", "add-member", "family", "alice", "--data-dir", home)
    port = free_port()
    web = run.popen("serve", "--data-dir", home, "--listen", f"127.0.0.1:{port}", "--workers", "1")
    try:
        wait_for_port(port, web, "isidorus serve")
        yield Host(run, home, port, web)
    finally:
        stop([web])


def login(host: Host, name: str, password: str) -> str:
    with httpx2.Client(base_url=host.base, timeout=10) as c:
        page = c.get("/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
        r = c.post("/login", data={"csrf": csrf, "name": name, "password": password})
        assert r.status_code == 303, r.text
        return str(c.cookies[COOKIE])


def request(
    path: str = "/auth/check",
    *,
    method: str = "GET",
    cookie: str | None = None,
    allow: str | None = None,
    version: str = "1.1",
    extra: tuple[str, ...] = (),
) -> bytes:
    lines = [f"{method} {path} HTTP/{version}", "Host: 127.0.0.1", "User-Agent: nginx"]
    if cookie is not None:
        lines.append(f"Cookie: theme=dark; {COOKIE}={cookie}; lang=fr")
    if allow is not None:
        lines.append(f"X-Isidorus-Allow: {allow}")
    lines += extra
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)

    def comparable(self) -> tuple[int, list[tuple[str, str]], bytes]:
        return self.status, [(k, v) for k, v in self.headers if k != "date"], self.body


class Connection:
    """One client connection, reading answers one at a time."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.data = b""

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.data += chunk
        return bool(chunk)

    def answer(self, head: bool = False) -> Answer:
        while b"\r\n\r\n" not in self.data:
            assert self._fill(), f"closed before an answer: {self.data!r}"
        top, self.data = self.data.split(b"\r\n\r\n", 1)
        status_line, *lines = top.decode("latin-1").split("\r\n")
        headers = [(k.lower(), v) for k, _, v in (line.partition(": ") for line in lines)]
        answer = Answer(int(status_line.split()[1]), headers, b"")
        size = 0 if head else int(answer.header("content-length") or 0)
        while len(self.data) < size:
            assert self._fill()
        answer.body, self.data = self.data[:size], self.data[size:]
        return answer

    def closed(self, timeout: float = 5.0) -> bool:
        """Whether the server closes the connection (within `timeout` seconds)."""
        self.sock.settimeout(timeout)
        try:
            return not self._fill()
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False


def ask(host: Host, data: bytes, head: bool = False) -> Answer:
    with Connection(host.port) as c:
        c.send(data)
        return c.answer(head)


def slow(path: str) -> str:
    # the same route, written so that only the app recognises it: answered the old way
    return path.replace("/auth/check", "/auth/%63heck")


def test_fast_answers_are_the_apps_answers(host):
    alice = login(host, "alice", PASSWORDS["alice"])
    bob = login(host, "bob", PASSWORDS["bob"])
    admin = login(host, "admin", ADMIN_PASSWORD)
    cases = [
        (None, None, 401),  # no cookie
        ("not-a-session", "family", 401),
        (alice, None, 200),  # no group named: any member
        (alice, "family", 200),
        (alice, " friends , family ", 200),
        (alice, "friends", 403),  # a member of another group
        (bob, "family", 403),
        (admin, "family", 200),  # admins always
    ]
    for method in ("GET", "HEAD"):
        for cookie, allow, status in cases:
            fast = ask(host, request(method=method, cookie=cookie, allow=allow), method == "HEAD")
            app = ask(host, request(slow("/auth/check"), method=method, cookie=cookie,
                                    allow=allow), method == "HEAD")  # fmt: skip
            assert fast.status == status, (method, cookie, allow)
            assert fast.comparable() == app.comparable(), (method, cookie, allow)
            assert fast.header("date") is not None
    ok = ask(host, request(cookie=alice, allow="family"))
    assert ok.header("x-isidorus-user") == "alice"
    assert ok.header("x-isidorus-email") == "alice@example.org"
    assert ok.header("content-length") == "0"
    assert ok.header("x-content-type-options") == "nosniff"
    refused = ask(host, request(cookie=bob, allow="family"))
    assert refused.header("x-isidorus-user") is None
    # a query string changes nothing
    assert ask(host, request("/auth/check?x=1", cookie=alice, allow="family")).status == 200


def test_keep_alive_pipelining_and_other_requests_on_the_same_connection(host):
    alice = login(host, "alice", PASSWORDS["alice"])
    with Connection(host.port) as c:
        for allow, status in (("family", 200), ("friends", 403), ("family", 200)):
            c.send(request(cookie=alice, allow=allow))
            assert c.answer().status == status
        # pipelined, in one write, with a page of the app in the middle: answers in order
        c.send(
            request(cookie=alice, allow="friends")
            + request(cookie=alice)
            + request("/login")
            + request(cookie=alice, allow="family")
            + request(method="HEAD", cookie=alice)
        )
        first, second, page, fourth, fifth = (c.answer(head=i == 4) for i in range(5))
        assert (first.status, second.status, page.status) == (403, 200, 200)
        assert b'name="csrf"' in page.body
        assert (fourth.status, fifth.status) == (200, 200)
        assert fourth.header("x-isidorus-user") == "alice"
        # a request cut anywhere, even byte by byte, is answered once whole
        data = request(cookie=alice, allow="family")
        for i in range(0, len(data), 7):
            c.send(data[i : i + 7])
            time.sleep(0.002)
        assert c.answer().status == 200
    # an HTTP/1.0 client (nginx's default towards auth_request) gets its answer, then the end
    with Connection(host.port) as c:
        c.send(request(cookie=alice, version="1.0"))
        answer = c.answer()
        assert answer.status == 200 and answer.header("connection") == "close"
        assert c.closed()
    with Connection(host.port) as c:
        c.send(request(cookie=alice, extra=("Connection: close",)) + request(cookie=alice))
        assert c.answer().header("connection") == "close"
        assert c.closed() and c.data == b""  # what followed the close is not answered


def test_a_logout_a_disabled_user_and_an_ended_session_are_seen_at_once(host):
    alice = login(host, "alice", PASSWORDS["alice"])
    bob = login(host, "bob", PASSWORDS["bob"])
    admin = login(host, "admin", ADMIN_PASSWORD)
    with Connection(host.port) as c:
        for cookie in (alice, bob, admin):
            c.send(request(cookie=cookie))
            assert c.answer().status == 200  # now in the process's cache
        # a logout through the portal
        with httpx2.Client(base_url=host.base, cookies={COOKIE: alice}, timeout=10) as web:
            csrf = re.search(r'name="csrf" value="([^"]+)"', web.get("/portal").text).group(1)
            assert web.post("/logout", data={"csrf": csrf}).status_code == 303
        c.send(request(cookie=alice))
        assert c.answer().status == 401
        # a user disabled by another process
        host.run("user", "disable", "bob", "--data-dir", host.home)
        c.send(request(cookie=bob))
        assert c.answer().status == 401
        # a session past its end, changed straight in the database
        key = hashlib.sha256(admin.encode()).hexdigest()
        db = sqlite3.connect(host.home / "state.sqlite")
        with db:
            changed = db.execute(
                "UPDATE sessions SET expires_at = '2000-01-01 00:00:00.000000' WHERE id = ?",
                (key,),
            ).rowcount
        db.close()
        if changed == 0:  # a future version may key sessions otherwise: end them all
            host.run("user", "passwd", "admin", "--password-stdin", "--data-dir", host.home,
                     input="a brand new passphrase\n")  # fmt: skip
        c.send(request(cookie=admin))
        assert c.answer().status == 401


def test_bad_requests_are_refused_and_the_server_goes_on(host):
    alice = login(host, "alice", PASSWORDS["alice"])
    bad = [
        b"GET /auth/check HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
        b"GET /auth/check HTTP/9.9\r\nHost: x\r\n\r\n",
        b"GET /auth/check HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked"
        b"\r\n\r\n",
        b"GET /auth/check\x00 HTTP/1.1\r\n\r\n",
    ]
    for data in bad:
        with Connection(host.port) as c:
            c.send(data)
            answer = c.answer()
            assert answer.status == 400, data
            assert answer.body == b"Invalid HTTP request received."
            assert c.closed()
    # headers too large for any browser: refused, and the connection ends
    with Connection(host.port) as c:
        c.send(request(cookie=alice, extra=tuple(f"X-Filler-{i}: {'y' * 1000}" for i in range(70))))
        answer = c.answer()
        assert answer.status == 431 and c.closed()
    # what the fast path does not answer goes to the app, on the same connection
    with Connection(host.port) as c:
        c.send(request(method="POST", cookie=alice, extra=("Content-Length: 0",)))
        assert c.answer().status == 405
        c.send(request(cookie=alice, allow="family"))
        assert c.answer().status == 200
    with Connection(host.port) as c:  # a body, which the app reads (and ignores)
        c.send(request(cookie=alice, extra=("Content-Length: 3",)) + b"abc" + request(cookie=alice))
        assert c.answer().status == 200 and c.answer().status == 200
    with Connection(host.port) as c:
        c.send(request("/auth/check/", cookie=alice))  # not this route: the app redirects
        assert c.answer().status in (307, 404)
    # and the server still answers everyone
    assert ask(host, request(cookie=alice, allow="family")).status == 200
    assert host.web.poll() is None


def test_a_client_that_does_not_read_is_not_read_either(host):
    many = 30_000  # about 9 MB of answers: more than the sockets' buffers hold
    with Connection(host.port) as c:
        sender = threading.Thread(target=c.send, args=(request(allow="family") * many,))
        sender.start()
        time.sleep(1)  # nothing read: the server stops reading until its answers leave
        statuses = [c.answer().status for _ in range(many)]
        sender.join(timeout=30)
        assert statuses == [401] * many
        c.send(request(extra=("Connection: close",)))
        assert c.answer().status == 401 and c.closed()


def test_idle_and_slow_clients_are_closed(host):
    with Connection(host.port) as idle, Connection(host.port) as slowpoke:
        slowpoke.send(b"GET /auth/ch")  # and never the rest
        idle.send(request())
        assert idle.answer().status == 401
        start = time.monotonic()
        assert idle.closed(timeout=15) and slowpoke.closed(timeout=15)
        assert time.monotonic() - start < 12  # uvicorn's keep-alive timeout is 5 s
    assert ask(host, request()).status == 401


def test_a_stop_closes_the_connections_and_ends_the_server(host):
    alice = login(host, "alice", PASSWORDS["alice"])
    with Connection(host.port) as c:
        c.send(request(cookie=alice))
        assert c.answer().status == 200
        host.web.send_signal(signal.SIGTERM)
        assert c.closed(timeout=10)
    # uvicorn ends by raising the signal again once it has shut down
    assert host.web.wait(timeout=10) in (0, -signal.SIGTERM)
    err = host.web.stderr.read().decode()
    assert "Traceback" not in err and "Exception" not in err, err


def test_a_name_and_password_are_checked_by_the_app_then_answered_fast(host):
    token = base64.b64encode(f"alice:{PASSWORDS['alice']}".encode()).decode()
    basic = (f"Authorization: Basic {token}",)
    wrong = (f"Authorization: Basic {base64.b64encode(b'alice:not hers').decode()}",)
    with Connection(host.port) as c:
        # the first is handed to the app (Argon2id, in a thread), the next ones answered
        # from the session it opened: the same answers, on the same connection, in order
        for allow, status in (("family", 200), ("friends", 403), ("family", 200)):
            c.send(request(allow=allow, extra=basic))
            answer = c.answer()
            assert answer.status == status, allow
        assert answer.header("x-isidorus-user") == "alice"
        c.send(request(extra=wrong))
        assert c.answer().status == 401
        c.send(request(allow="family", extra=basic))
        assert c.answer().status == 200
