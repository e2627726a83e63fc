"""The HTTP fast path of `isidorus serve`: nginx asks `/auth/check` before every request
to a protected service, so that answer is given straight from the connection, without
ASGI, Starlette or a task per request; every other request goes to uvicorn as before.

connection    `FastPath` is the protocol of each connection uvicorn accepts. It reads
              each request's head (up to the blank line) itself while requests are
              `GET` or `HEAD /auth/check`, answers it by the app's one rule
              (web/auth_check.py), and writes the same status and headers as the app.
hand-over     the first request that is anything else (another path or method, a body,
              an upgrade, or an error of the rule) goes, with everything after it, to
              uvicorn's own protocol for the rest of the connection, exactly as if it
              had been there from the start: the app answers it as it always did.

Requests are answered in order as they are parsed, so pipelining keeps its order. A
malformed request gets uvicorn's 400 and the connection closes; so does a head larger
than MAX_HEAD (431). A connection idle, or sending a head, for longer than uvicorn's
keep-alive timeout is closed. Writes that the client does not read stop the reading.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, cast

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from isidorus.web.app import HEADERS
from isidorus.web.auth_check import ALLOW_HEADER, VERIFY, AuthCheck, Verdict

__all__ = ["FastPath", "auth_check_of"]

# the request lines answered here; anything else is uvicorn's
PREFIXES = (b"GET /auth/check ", b"GET /auth/check?", b"HEAD /auth/check ", b"HEAD /auth/check?")
LONGEST = max(len(p) for p in PREFIXES)
MAX_HEAD = 64 * 1024
END = b"\r\n\r\n"
# what uvicorn refuses to write in a header value (a line break would split the answer)
UNSAFE_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
SECURITY = b"".join(name + b": " + value + b"\r\n" for name, value in HEADERS)
CLOSE = b"connection: close\r\n"
ALLOW = ALLOW_HEADER.encode()
BAD_REQUEST = b"Invalid HTTP request received."
TOO_LARGE = b"Request header fields too large."


def auth_check_of(app: object) -> AuthCheck | None:
    """The rule of the isidorus app inside uvicorn's wrapping of it (proxy headers…)."""
    for _ in range(8):
        state = getattr(app, "state", None)
        found = getattr(state, "auth_check", None) if state is not None else None
        if isinstance(found, AuthCheck):
            return found
        app = getattr(app, "app", None)
        if app is None:
            break
    return None


def _kind(data: bytes, pos: int) -> bool | None:
    """Whether the request at `pos` is one for the fast path; None when too little has
    arrived to tell."""
    if data.startswith(PREFIXES, pos):
        return True
    start = data[pos : pos + LONGEST]
    if len(start) < LONGEST and any(p.startswith(start) for p in PREFIXES):
        return None
    return False


class Answers:
    """The bytes of each answer, built once: a process sees few users, two statuses and
    one date a second."""

    SIZE = 10_000

    def __init__(self) -> None:
        self.tails: dict[tuple[int, str, str, bool], bytes] = {}
        self.defaults: list[tuple[bytes, bytes]] | None = None
        self.lines: dict[int, bytes] = {}

    def start(self, status: int, defaults: list[tuple[bytes, bytes]]) -> bytes:
        """The status line and uvicorn's own headers (the date, which it renews)."""
        if defaults is not self.defaults:
            self.defaults, self.lines = defaults, {}
        line = self.lines.get(status)
        if line is None:
            own = b"".join(name + b": " + value + b"\r\n" for name, value in defaults)
            line = self.lines[status] = STATUS_LINE[status] + own
        return line

    def tail(self, verdict: Verdict, keep_alive: bool) -> bytes | None:
        """The rest of the answer; None when a value cannot be written in a header (the
        app says what is wrong). Raises UnicodeEncodeError as Starlette would."""
        key = (verdict.status, verdict.user, verdict.email, keep_alive)
        tail = self.tails.get(key)
        if tail is None:
            lines = [
                name.encode() + b": " + value.encode("latin-1") + b"\r\n"
                for name, value in verdict.headers().items()
            ]
            if any(UNSAFE_VALUE.search(line[:-2]) for line in lines):
                return None
            tail = b"".join([*lines, b"content-length: 0\r\n", SECURITY])
            tail += b"\r\n" if keep_alive else CLOSE + b"\r\n"
            if len(self.tails) >= self.SIZE:
                self.tails.clear()
            self.tails[key] = tail
        return tail


ANSWERS = Answers()


class FastPath(asyncio.Protocol):
    """One connection (see the module's docstring). Built by uvicorn with the arguments
    of its own protocols; `isidorus serve` names it as uvicorn's `http`."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if not config.loaded:
            config.load()
        self.config = config
        self.server_state = server_state
        self.app_state = app_state
        self.loop = _loop or asyncio.get_event_loop()
        self.check = auth_check_of(config.loaded_app)
        self.transport: asyncio.Transport | None = None
        self.buffer = b""  # the start of a request not yet complete
        self.parser: httptools.HttpRequestParser | None = None
        # one timer per connection, moved on by each answer without being rescheduled
        self.timer: asyncio.TimerHandle | None = None
        self.deadline = 0.0
        self.paused = False  # the client does not read what is written
        self.done = False  # closed, or handed over
        # the request being parsed
        self.cookie: bytes | None = None
        self.allow: bytes | None = None
        self.authorization: bytes | None = None
        self.complete = False
        self.keep_alive = False
        self.messages = 0

    # -- asyncio

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.server_state.connections.add(self)  # type: ignore[arg-type]
        if self.check is None:  # not isidorus's app: uvicorn does everything
            self._hand_over(b"")
            return
        self.deadline = self.loop.time() + self.config.timeout_keep_alive
        self.timer = self.loop.call_at(self.deadline, self._expire)

    def data_received(self, data: bytes) -> None:
        if self.done:
            return
        if self.buffer:
            data, self.buffer = self.buffer + data, b""
        self._serve(data)

    def eof_received(self) -> bool | None:
        return None  # every complete request is answered already: close

    def connection_lost(self, exc: Exception | None) -> None:
        self.done = True
        self._disarm()
        self.server_state.connections.discard(self)

    def pause_writing(self) -> None:
        self.paused = True
        if self.transport is not None and not self.done:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused = False
        if self.transport is not None and not self.done:
            self.transport.resume_reading()
            data, self.buffer = self.buffer, b""
            self._serve(data)

    # -- uvicorn

    def shutdown(self) -> None:
        """uvicorn stops: no answer is ever half written here, so close at once."""
        self._close()

    # -- the requests

    def _serve(self, data: bytes) -> None:
        """Answers the complete requests in `data` in order, keeping the rest."""
        answers: list[bytes] = []
        pos, size = 0, len(data)
        while pos < size and not self.paused:
            kind = _kind(data, pos)
            if kind is None:
                break
            if not kind:
                self._write(answers)
                self._hand_over(data[pos:])
                return
            end = data.find(END, pos, pos + MAX_HEAD + len(END))
            if end < 0:
                if size - pos >= MAX_HEAD:
                    self._refuse(answers, 431, TOO_LARGE)
                    return
                break
            end += len(END)
            answer = self._answer(memoryview(data)[pos:end])
            if answer is None:
                self._write(answers)
                self._hand_over(data[pos:])
                return
            if not answer:
                self._refuse(answers, 400, BAD_REQUEST)
                return
            answers.append(answer)
            pos = end
            self.server_state.total_requests += 1
            if not self.keep_alive:
                self._write(answers)
                self._close()
                return
        self.buffer = data[pos:]
        if answers:
            self._write(answers)
            self.deadline = self.loop.time() + self.config.timeout_keep_alive

    def _answer(self, head: memoryview) -> bytes | None:
        """The answer to one request's head: None to hand it over, b"" when malformed."""
        if self.parser is None:
            self.parser = httptools.HttpRequestParser(self)
        self.cookie = self.allow = self.authorization = None
        self.complete = self.keep_alive = False
        self.messages = 0
        try:
            self.parser.feed_data(head)
        except httptools.HttpParserUpgrade:
            return None  # the app decides what an upgrade gets
        except httptools.HttpParserError:
            return b""
        if self.messages != 1:
            return b""  # one head that the parser reads as two requests: never answer it
        if not self.complete:
            return None  # a body follows: the app reads it
        assert self.check is not None
        try:
            verdict = self.check(
                None if self.cookie is None else self.cookie.decode("latin-1"),
                None if self.allow is None else self.allow.decode("latin-1"),
                None if self.authorization is None else self.authorization.decode("latin-1"),
            )
            if verdict is VERIFY:
                return None  # a password to check: the app does it, in a thread
            tail = ANSWERS.tail(verdict, self.keep_alive)
        except Exception:
            # the app answers it again, and its error handler says what went wrong
            return None
        if tail is None:
            return None
        return ANSWERS.start(verdict.status, self.server_state.default_headers) + tail

    # httptools' callbacks

    def on_message_begin(self) -> None:
        self.messages += 1

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"cookie":
            if self.cookie is None:
                self.cookie = value.rstrip(b" \t")
        elif name == ALLOW and self.allow is None:
            self.allow = value.rstrip(b" \t")
        elif name == b"authorization" and self.authorization is None:
            self.authorization = value.rstrip(b" \t")

    def on_headers_complete(self) -> None:
        # asked now: once the message is complete the parser has moved on to the next
        assert self.parser is not None
        version = self.parser.get_http_version()
        self.keep_alive = version != "1.0" and self.parser.should_keep_alive()

    def on_message_complete(self) -> None:
        self.complete = True

    # -- the connection

    def _write(self, answers: list[bytes]) -> None:
        if answers and self.transport is not None and not self.transport.is_closing():
            self.transport.write(answers[0] if len(answers) == 1 else b"".join(answers))
        answers.clear()

    def _refuse(self, answers: list[bytes], status: int, message: bytes) -> None:
        """uvicorn's own answer to a request it cannot read, then the end."""
        answers.append(
            b"".join(
                [
                    ANSWERS.start(status, self.server_state.default_headers),
                    b"content-type: text/plain; charset=utf-8\r\n",
                    b"content-length: " + str(len(message)).encode() + b"\r\n",
                    CLOSE,
                    b"\r\n",
                    message,
                ]
            )
        )
        self._write(answers)
        self._close()

    def _hand_over(self, data: bytes) -> None:
        """From here on the connection is uvicorn's, starting with `data`."""
        self.done = True
        self._disarm()
        self.server_state.connections.discard(self)
        transport = self.transport
        assert transport is not None
        if transport.is_closing():
            return
        protocol = HttpToolsProtocol(
            config=self.config,
            server_state=self.server_state,
            app_state=self.app_state,
            _loop=self.loop,
        )
        protocol.connection_made(transport)
        transport.set_protocol(protocol)
        if data:
            protocol.data_received(data)

    def _close(self) -> None:
        self.done = True
        self._disarm()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _expire(self) -> None:
        """Closes a connection idle (or slow to send its request) past the keep-alive
        timeout, as uvicorn does."""
        self.timer = None
        if self.done:
            return
        if self.loop.time() < self.deadline:
            self.timer = self.loop.call_at(self.deadline, self._expire)
            return
        self._close()

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
