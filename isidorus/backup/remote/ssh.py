"""Reaching another host with the operator's own OpenSSH client.

isidorus runs `ssh` rather than speaking SSH itself, so everything the operator set up for
ssh applies as it does on the command line: host aliases and ProxyJump in ~/.ssh/config,
keys, the agent, and known_hosts. Two things are imposed, after the operator's own options
(ssh keeps the first value it reads, so an explicit `-o` in the `ssh_command` setting wins):
`BatchMode=yes` (no prompt can hang a nightly job) and `StrictHostKeyChecking=yes` (a host
whose key is not in known_hosts is refused, never accepted silently).

`SshPipe` is one such process with its stdin and stdout as a byte pipe (`send`/`recv`, the
shape of a socket), and its stderr kept to explain a failure in one line.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import os
import shlex
import signal
import threading
import time
from typing import NamedTuple
from urllib.parse import unquote, urlsplit

from isidorus.backup.errors import BackendError
from isidorus.errors import UsageError

# unless the operator's setup sends keepalives of its own, ssh gives up on a peer that
# answers none of 4 keepalives sent 15 s apart: a cut link is reported within about a
# minute instead of hanging until TCP gives up
_KEEPALIVE = ("-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4")


class SshTarget(NamedTuple):
    """`ssh://[user@]host[:port]/path` taken apart."""

    scheme: str
    host: str
    user: str | None
    port: int | None
    path: str

    @classmethod
    def parse(cls, url: str) -> SshTarget:
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            raise UsageError(f"{url!r} has a bad port: give a number from 1 to 65535") from None
        if not parts.hostname:
            raise UsageError(f"{url!r} names no host: {parts.scheme}://[user@]host[:port]/path")
        path = unquote(parts.path)
        if path in ("", "/"):
            raise UsageError(
                f"{url!r} names no path on the host: {parts.scheme}://[user@]host[:port]/path"
            )
        user = unquote(parts.username) if parts.username else None
        return cls(parts.scheme, parts.hostname, user, port, path)

    @property
    def display(self) -> str:
        who = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        return f"{who}{self.host}{port}"


def ssh_argv(
    target: SshTarget,
    ssh_command: str,
    remote: list[str],
    *,
    subsystem: bool = False,
    keepalive: bool = True,
) -> list[str]:
    """The command line that runs `remote` (a command, or with `subsystem` the name of an
    SSH subsystem such as sftp) on the target. With `keepalive`, ssh is asked for
    keepalives unless the operator's setup has its own (a protocol with signs of life of
    its own does without: no `ssh -G` to run first)."""
    try:
        argv = shlex.split(ssh_command or "ssh")
    except ValueError as exc:
        raise UsageError(f"the ssh_command setting cannot be parsed: {exc}") from None
    if not argv:
        argv = ["ssh"]
    base = tuple(argv)
    argv += ["-x", "-a", "-T", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"]
    if keepalive and not _has_keepalive(base, target.host, target.port):
        argv += _KEEPALIVE
    if target.port:
        argv += ["-p", str(target.port)]
    if target.user:
        argv += ["-l", target.user]
    if subsystem:
        argv.append("-s")
    argv += ["--", target.host]
    # ssh hands the remote shell one string: quote each word so paths with spaces survive
    argv.append(" ".join(shlex.quote(w) for w in remote))
    return argv


def serve_argv(target: SshTarget, ssh_command: str, remote_isidorus: str) -> list[str]:
    """The command line that runs `isidorus backup serve --stdio /` on the target (where a
    home's forced command takes its place); `remote_isidorus` is the program there."""
    remote = [*remote_isidorus.split(), "backup", "serve", "--stdio", "/"]
    return ssh_argv(target, ssh_command, remote, keepalive=False)  # the home sends ticks


def _has_keepalive(base: tuple[str, ...], host: str, port: int | None) -> bool:
    """Whether the operator's ssh setup already sends keepalives to this host (`ssh -G`
    prints the options ssh would use, config files included)."""
    argv = [*base, "-G"]
    if port:
        argv += ["-p", str(port)]
    argv += ["--", host]
    import subprocess  # only here: a home's connection starts ssh without it

    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    for line in out.splitlines():
        key, _, value = line.partition(" ")
        if key == "serveraliveinterval":
            return value.strip() not in ("", "0")
    return False


class RateLimit:
    """At most `rate` bytes a second through `wait(n)`, shared by every thread (a token
    bucket of one second: bursts stay short on a home's uplink)."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._lock = threading.Lock()
        self._allowance = float(rate)
        self._last = time.monotonic()

    def wait(self, n: int) -> None:
        if self.rate <= 0:
            return
        with self._lock:
            now = time.monotonic()
            self._allowance = min(
                float(self.rate), self._allowance + (now - self._last) * self.rate
            )
            self._last = now
            self._allowance -= n
            debt = -self._allowance / self.rate if self._allowance < 0 else 0.0
        if debt > 0:
            time.sleep(debt)


def explain(stderr: str, target: SshTarget) -> BackendError:
    """One line for what ssh said on its way out, and whether trying again may help."""
    text = stderr.strip()
    low = text.lower()
    where = target.display
    if "host key verification failed" in low or "remote host identification has changed" in low:
        return BackendError(
            f"the host key of {target.host} is not in known_hosts (or changed): check its "
            "fingerprint with the host's owner, then add it (ssh-keyscan, compared by hand); "
            "isidorus never accepts a host key by itself"
        )
    if "permission denied" in low:
        return BackendError(
            f"{where} refused the login: check that this host's key is in the account's "
            "authorized_keys (or in the agent), and the user name"
        )
    if "could not resolve hostname" in low:
        return BackendError(f"cannot find the host {target.host}: {_last_line(text)}")
    for transient in (
        "connection refused",
        "no route to host",
        "network is unreachable",
        "timed out",
        "not responding",
        "connection reset",
        "broken pipe",
        "connection closed",
        "closed by remote host",
    ):
        if transient in low:
            return BackendError(
                f"lost or could not open the connection to {where}: {_last_line(text)} "
                "(run the command again once the host is back)",
                permanent=False,
            )
    if text:
        return BackendError(f"ssh to {where}: {_last_line(text)}", permanent=False)
    return BackendError(f"the connection to {where} ended unexpectedly", permanent=False)


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


class Child:
    """A program started with `os.posix_spawnp`, in a session of its own (a Ctrl-C reaches
    isidorus, which ends it), with pipes to its stdin, stdout and stderr: the part of
    `subprocess.Popen` this module needs, without loading subprocess, a tenth of the start
    of a sync to a home, before the first ssh leaves."""

    def __init__(self, argv: list[str]) -> None:
        (child_in, to_child), (from_child, child_out), (from_err, child_err) = (
            os.pipe() for _ in range(3)
        )
        theirs = [child_in, child_out, child_err]
        try:
            # above 0-2 (a parent whose own are closed gets those): the child's dup2s
            # onto 0, 1, 2 would otherwise overwrite one another
            theirs = [_above_standard(fd) for fd in theirs]
            self.pid = os.posix_spawnp(
                argv[0],
                argv,
                os.environ,
                file_actions=[(os.POSIX_SPAWN_DUP2, fd, n) for n, fd in enumerate(theirs)],
                setsid=True,
                setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),  # as Python's children get them
            )
        except BaseException:
            for fd in (to_child, from_child, from_err):
                os.close(fd)
            raise
        finally:
            for fd in {child_in, child_out, child_err, *theirs}:
                os.close(fd)
        self.stdin = open(to_child, "wb", buffering=0)  # noqa: SIM115 - closed by close()
        self.stdout = open(from_child, "rb", buffering=0)  # noqa: SIM115
        self.stderr = open(from_err, "rb")  # noqa: SIM115
        self.returncode: int | None = None
        self._reaping = threading.Lock()

    def poll(self) -> int | None:
        """Its exit code once it has ended, else None."""
        with self._reaping:
            if self.returncode is None:
                try:
                    pid, status = os.waitpid(self.pid, os.WNOHANG)
                except ChildProcessError:
                    self.returncode = -1  # reaped by someone else (a SIGCHLD handler)
                else:
                    if pid:
                        self.returncode = os.waitstatus_to_exitcode(status)
            return self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        """Its exit code, waiting up to `timeout` seconds (None: for as long as it runs);
        None if it still runs then."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.0005
        while (code := self.poll()) is None:
            left = 1.0 if deadline is None else deadline - time.monotonic()
            if left <= 0:
                return None
            time.sleep(min(pause, left))
            pause = min(pause * 2, 0.05)
        return code

    def kill(self) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)


def _above_standard(fd: int) -> int:
    if fd > 2:
        return fd
    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)


class SshPipe:
    """One ssh process; its stdin and stdout form a byte pipe to the remote command."""

    def __init__(
        self, target: SshTarget, argv: list[str], rate_limit: RateLimit | None = None
    ) -> None:
        self.target = target
        self.rate_limit = rate_limit
        self._stderr: collections.deque[str] = collections.deque(maxlen=20)
        try:
            self.proc = Child(argv)
        except FileNotFoundError:
            raise UsageError(
                f"{argv[0]} was not found: install OpenSSH's client (apt install "
                "openssh-client) or set ssh_command"
            ) from None
        self._err_thread = threading.Thread(target=self._read_stderr, daemon=True)
        self._err_thread.start()
        self._closed = threading.Event()
        self.last_heard = time.monotonic()  # when the other end last sent anything

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            if line:
                self._stderr.append(line)

    def stderr(self) -> str:
        return "\n".join(self._stderr)

    def failure(self) -> BackendError:
        """Why the pipe broke, in one line: waits a moment for ssh to end and say why."""
        self.proc.wait(timeout=5)
        self._err_thread.join(timeout=1)
        return explain(self.stderr(), self.target)

    def send(self, data: bytes | bytearray | memoryview) -> int:
        assert self.proc.stdin is not None
        if self.rate_limit is not None:
            self.rate_limit.wait(len(data))
        try:
            return self.proc.stdin.write(data) or 0
        except (BrokenPipeError, ValueError, OSError):
            raise self.failure() from None

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            # in pieces, so a rate limit paces a large write instead of sleeping after it
            n = self.send(view[: 256 * 1024])
            if n <= 0:
                raise self.failure()
            view = view[n:]

    def recv(self, n: int) -> bytes:
        assert self.proc.stdout is not None
        try:
            data = self.proc.stdout.read(n) or b""
        except (ValueError, OSError):
            return b""
        self.last_heard = time.monotonic()
        return data

    def recv_exactly(self, n: int) -> bytes:
        chunks = []
        while n:
            data = self.recv(n)
            if not data:
                raise self.failure()
            chunks.append(data)
            n -= len(data)
        return b"".join(chunks)

    def wait_closed(self, timeout: float) -> bool:
        """Whether the pipe is closed, waiting up to `timeout` seconds for it."""
        return self._closed.wait(timeout)

    def kill(self) -> None:
        """End ssh at once: whoever reads or writes the pipe then finds it broken."""
        self.proc.kill()

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        with contextlib.suppress(OSError, ValueError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        if self.proc.wait(timeout=10) is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for f in (self.proc.stdout, self.proc.stderr):
            with contextlib.suppress(OSError, ValueError):
                if f is not None:
                    f.close()

    def __enter__(self) -> SshPipe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ssh processes started ahead of the connection that will use them, by command line
_AHEAD: dict[tuple[str, ...], SshPipe] = {}


def start_ahead(target: SshTarget, argv: list[str]) -> None:
    """Start ssh now for a connection that a command, still loading, will ask for with the
    same command line (`take_ahead`): the handshake overlaps the rest of the start."""
    key = tuple(argv)
    if key not in _AHEAD:
        _AHEAD[key] = SshPipe(target, argv)


def take_ahead(argv: list[str]) -> SshPipe | None:
    """The ssh started ahead with this command line, if any (each is taken once)."""
    return _AHEAD.pop(tuple(argv), None)
