"""Services as long-lived processes under the host's process manager.

systemd where it is PID 1, else supervisord (Debian's `supervisor` package: containers and
hosts booted without systemd). Either way isidorus writes one file per service (a unit, or
a `[program:NAME]` section in its own file), marked as its own: a file of that name that
isidorus did not write is never replaced or removed.

A started service is also enabled (it comes back when the host boots); a stopped one is
disabled. Installing does not start anything.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from isidorus.errors import UsageError
from isidorus.settings import SETTINGS
from isidorus.system.errors import HostError
from isidorus.system.run import run

STATES = ("running", "starting", "stopped", "failed", "absent")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
MARK = "Written by isidorus"
CTL_TIMEOUT = 120.0  # seconds: a stop waits up to stopwaitsecs per process, then kills
INIT_D = "/etc/init.d"


@dataclass(frozen=True)
class ProcessSpec:
    """One service's process. Refused (UsageError) when a value cannot be written on the
    one line a unit or a program section gives it."""

    name: str  # the unit or program name, e.g. isidorus-radicale
    command: tuple[str, ...]  # argv; the program's absolute path first
    user: str
    directory: str  # its working directory
    environment: Mapping[str, str] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self) -> None:
        if not NAME_RE.match(self.name):
            raise UsageError(
                f"process name {self.name!r} must be lowercase letters, digits, '_', '.', '-'"
            )
        if not self.command or not self.command[0].startswith("/"):
            raise UsageError(f"{self.name}: the command must start with the program's full path")
        if not USER_RE.match(self.user):
            raise UsageError(f"{self.name}: {self.user!r} is not a Unix user name")
        if not self.directory.startswith("/"):
            raise UsageError(f"{self.name}: the working directory must be an absolute path")
        for key in self.environment:
            if not ENV_KEY_RE.match(key):
                raise UsageError(f"{self.name}: {key!r} is not an environment variable name")
        values = [
            ("the command", " ".join(self.command)),
            ("the working directory", self.directory),
            ("the description", self.description),
            *((f"environment {k}", v) for k, v in self.environment.items()),
        ]
        for what, value in values:
            if CONTROL_RE.search(value):
                raise UsageError(
                    f"{self.name}: {what} holds a newline or another control character; "
                    "pass such values in a file the service reads"
                )


class ProcessManager(Protocol):
    """What services need of a process manager. Each call runs the manager's own command
    and raises HostError with one line when it fails or the manager cannot be reached."""

    kind: str  # "systemd" or "supervisord"

    def install(self, spec: ProcessSpec) -> None:
        """Write the unit or program section (replacing an earlier one of that name) and
        have the manager read it. Does not start it."""

    def uninstall(self, name: str) -> None:
        """Stop it, remove its file, have the manager forget it. Absent: nothing to do."""

    def start(self, name: str) -> None:
        """Start it and enable it (it comes back at boot); running already: nothing to do.
        HostError when it is not installed, or when it could not be started (supervisord
        waits 2 s and says so; systemd only when the program cannot be executed)."""

    def stop(self, name: str) -> None:
        """Stop it and disable it; stopped already: nothing to do."""

    def restart(self, name: str) -> None:
        """Stop it if it runs, then as start()."""

    def state(self, name: str) -> str:
        """One of STATES."""

    def logs(self, name: str, lines: int = 100) -> list[str]:
        """Its last `lines` lines of output (stdout and stderr), oldest first."""

    def take_over(self, unit: str) -> None:
        """Stop the system's own service `unit` (one a Debian package starts at its
        install and at boot) and keep it from starting again: isidorus runs that
        software itself, its way. Absent: nothing to do."""

    def bring_up(self, unit: str) -> None:
        """Start the system's own service `unit` (a database server services share) and
        have it start at boot; running already: nothing to do. HostError when it is not
        there or does not start."""


def process_manager(settings: Mapping[str, Any]) -> ProcessManager:
    """systemd when it is PID 1, else supervisord as `settings` configure it."""
    if systemd_is_pid1():
        return SystemdManager(_setting(settings, "systemd_unit_dir"))
    return SupervisordManager(
        config=_setting(settings, "supervisor_config"),
        conf_dir=_setting(settings, "supervisor_conf_dir"),
        log_dir=_setting(settings, "service_log_dir"),
    )


def systemd_is_pid1() -> bool:
    # what sd_booted() checks
    return os.path.isdir("/run/systemd/system")


def _setting(settings: Mapping[str, Any], name: str) -> str:
    # callers (and tests) may pass only the settings they change
    if name in settings:
        return str(settings[name])
    return str(next(s.default for s in SETTINGS if s.name == name))


# --- systemd ---------------------------------------------------------------------------

SYSTEMD_SAFE_RE = re.compile(r"^[A-Za-z0-9_@+=:,./-]+$")


def systemd_word(arg: str) -> str:
    """One argument of ExecStart=: quoted and C-escaped unless plain; `%` (specifiers) and
    `$` (variable expansion) doubled."""
    arg = arg.replace("%", "%%").replace("$", "$$")
    if SYSTEMD_SAFE_RE.match(arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def systemd_environment(key: str, value: str) -> str:
    # Environment= unquotes and C-unescapes, expands specifiers, and leaves `$` alone
    assignment = f"{key}={value}".replace("%", "%%")
    return '"' + assignment.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_unit(spec: ProcessSpec) -> str:
    """The systemd unit of `spec`."""
    _plain_path(spec.directory, "working directory", spec.name)
    description = (spec.description or spec.name).replace("%", "%%")
    env = "".join(f"Environment={systemd_environment(k, v)}\n" for k, v in spec.environment.items())
    return (
        f"# {MARK}: it replaces this file at each install\n"
        "[Unit]\n"
        f"Description={description}\n"
        "After=network.target\n"
        "\n"
        "[Service]\n"
        "Type=exec\n"
        f"User={spec.user}\n"
        f"WorkingDirectory={spec.directory.replace('%', '%%')}\n"
        f"{env}"
        f"ExecStart={' '.join(systemd_word(a) for a in spec.command)}\n"
        "Restart=on-failure\n"
        "RestartSec=2\n"
        "NoNewPrivileges=yes\n"
        "PrivateTmp=yes\n"
        "ProtectSystem=full\n"
        "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


SYSTEMD_STATES = {
    "active": "running",
    "reloading": "running",
    "refreshing": "running",
    "activating": "starting",  # also between two tries of Restart=on-failure
    "deactivating": "stopped",
    "inactive": "stopped",
    "failed": "failed",
}


class SystemdManager:
    kind = "systemd"

    def __init__(self, unit_dir: str) -> None:
        self.unit_dir = unit_dir

    def _unit(self, name: str) -> str:
        return os.path.join(self.unit_dir, f"{_checked(name)}.service")

    def _ctl(self, *args: str) -> None:
        run(["systemctl", *args], what="systemctl " + " ".join(args), timeout=CTL_TIMEOUT)

    def install(self, spec: ProcessSpec) -> None:
        _check_user(spec.user)
        path = self._unit(spec.name)
        _read_own(path)
        _write_atomic(path, render_unit(spec))
        self._ctl("daemon-reload")

    def uninstall(self, name: str) -> None:
        path = self._unit(name)
        if _read_own(path) is None:
            return
        self._ctl("disable", "--now", "--quiet", f"{name}.service")
        os.remove(path)
        self._ctl("daemon-reload")
        # a unit that once failed is remembered as failed until this, file or not
        run(["systemctl", "reset-failed", f"{name}.service"], check=False)

    def _installed(self, name: str) -> str:
        if _read_own(self._unit(name)) is None:
            raise HostError(f"{name} is not installed: no {self._unit(name)}")
        return f"{name}.service"

    def start(self, name: str) -> None:
        self._ctl("enable", "--now", "--quiet", self._installed(name))

    def stop(self, name: str) -> None:
        self._ctl("disable", "--now", "--quiet", self._installed(name))

    def restart(self, name: str) -> None:
        unit = self._installed(name)
        self._ctl("enable", "--quiet", unit)
        self._ctl("restart", unit)

    def take_over(self, unit: str) -> None:
        if run(["systemctl", "cat", "--", unit], check=False).returncode != 0:
            return  # no such unit
        # masked, not only disabled: a package's upgrade enables its units again
        self._ctl("stop", "--quiet", "--", unit)
        self._ctl("mask", "--quiet", "--", unit)

    def bring_up(self, unit: str) -> None:
        self._ctl("enable", "--now", "--quiet", "--", unit)

    def state(self, name: str) -> str:
        if _read_own(self._unit(name)) is None:
            return "absent"
        # is-active exits non-zero for every state but active: its output is the answer
        result = run(["systemctl", "is-active", f"{name}.service"], check=False)
        return SYSTEMD_STATES.get(result.stdout.strip(), "failed")

    def logs(self, name: str, lines: int = 100) -> list[str]:
        if lines <= 0:
            return []
        unit = f"{_checked(name)}.service"
        result = run(["journalctl", "-u", unit, "-n", str(lines), "--no-pager", "-o", "cat"])
        return result.stdout.splitlines()


# --- supervisord -----------------------------------------------------------------------

# supervisord reads its files with configparser (`;` or `#` after a space starts a comment),
# expands `%(name)s` in every value, then splits `command` like a POSIX shell (shlex) and
# `environment` with shlex's non-POSIX mode (quotes, but no escapes)
SUPERVISOR_SAFE_RE = re.compile(r"^[A-Za-z0-9_@%+=:,./-]+$")
COMMENT_RE = re.compile(r"\s[;#]")
LOG_MAX_BYTES = "10MB"
LOG_BACKUPS = 3
START_SECS = 2  # running this long counts as started


def supervisor_word(arg: str) -> str:
    """One argument of `command=`: plain, or double-quoted with `\\` and `"` escaped, and
    every `;` and `#` outside the quotes as `\\;` and `\\#` so no space can precede them."""
    if SUPERVISOR_SAFE_RE.match(arg):
        return arg.replace("%", "%%")
    out = []
    for piece in re.split(r"([;#])", arg.replace("%", "%%")):
        if piece in (";", "#"):
            out.append("\\" + piece)
        elif piece:
            out.append('"' + piece.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return "".join(out) or '""'


def supervisor_environment(key: str, value: str, name: str) -> str:
    """`KEY="value"` (or single quotes when the value holds double ones); values that
    supervisord's parser cannot carry are refused."""
    quotes = ("'", '"')
    # it strips every quote from both ends of a value, and knows no escape
    if all(q in value for q in quotes) or value[:1] in quotes or value[-1:] in quotes:
        raise UsageError(
            f"{name}: supervisord cannot pass environment {key}: its value starts or ends "
            "with a quote, or holds both kinds; pass it in a file the service reads"
        )
    if COMMENT_RE.search(value):
        raise UsageError(
            f"{name}: supervisord cannot pass environment {key}: a ';' or '#' after a space "
            "starts a comment there; pass it in a file the service reads"
        )
    quote = "'" if '"' in value else '"'
    return f"{key}={quote}{value.replace('%', '%%')}{quote}"


def render_program(spec: ProcessSpec, *, log_file: str, autostart: bool, home: str) -> str:
    """The supervisord `[program:NAME]` file of `spec`. `home` is the user's home:
    supervisord sets neither HOME, USER nor LOGNAME for the user it switches to."""
    _plain_path(spec.directory, "working directory", spec.name)
    env = {"HOME": home, "USER": spec.user, "LOGNAME": spec.user, **spec.environment}
    pairs = ",".join(supervisor_environment(k, v, spec.name) for k, v in env.items())
    return (
        f"; {MARK}: it replaces this file at each install\n"
        f"; {spec.description or spec.name}\n"
        f"[program:{spec.name}]\n"
        f"command={' '.join(supervisor_word(a) for a in spec.command)}\n"
        f"user={spec.user}\n"
        f"directory={spec.directory.replace('%', '%%')}\n"
        f"environment={pairs}\n"
        f"autostart={'true' if autostart else 'false'}\n"
        "autorestart=true\n"
        f"startsecs={START_SECS}\n"
        "stopasgroup=true\n"
        "killasgroup=true\n"
        "redirect_stderr=true\n"
        f"stdout_logfile={log_file}\n"
        f"stdout_logfile_maxbytes={LOG_MAX_BYTES}\n"
        f"stdout_logfile_backups={LOG_BACKUPS}\n"
    )


SUPERVISOR_STATES = {
    "RUNNING": "running",
    "STARTING": "starting",
    "BACKOFF": "starting",  # exited too soon, will be tried again (then FATAL)
    "STOPPING": "stopped",
    "STOPPED": "stopped",
    "EXITED": "stopped",
    "FATAL": "failed",
    "UNKNOWN": "failed",
}


class SupervisordManager:
    """Programs in `conf_dir` (which `config` must include), output in `log_dir`. Its
    `autostart=` is the enabled flag: supervisord starts a program with autostart=true
    whenever it loads it, at boot or at an `update`, so only start() and restart() set it."""

    kind = "supervisord"

    def __init__(self, config: str, conf_dir: str, log_dir: str) -> None:
        # log paths are expanded twice by supervisord: no `%` can get through
        if "%" in log_dir or COMMENT_RE.search(log_dir) or not log_dir.startswith("/"):
            raise UsageError(f"service_log_dir {log_dir!r}: use an absolute path without '%'")
        self.config = config
        self.conf_dir = conf_dir
        self.log_dir = log_dir

    def _conf(self, name: str) -> str:
        return os.path.join(self.conf_dir, f"{_checked(name)}.conf")

    def take_over(self, unit: str) -> None:
        # without systemd, a Debian package's service is its init script
        name = unit.removesuffix(".service")
        script = os.path.join(INIT_D, _checked(name))
        if not os.path.exists(script):
            return
        run([script, "stop"], what=f"{script} stop", timeout=CTL_TIMEOUT, check=False)
        # the links that start it at boot become links that stop it (kept by upgrades)
        run(["update-rc.d", name, "disable"], what=f"update-rc.d {name} disable", check=False)

    def bring_up(self, unit: str) -> None:
        name = unit.removesuffix(".service")
        script = os.path.join(INIT_D, _checked(name))
        if not os.path.exists(script):
            raise HostError(f"{unit} is needed and not installed: no {script}")
        status = run([script, "status"], what=f"{script} status", check=False)
        if status.returncode != 0:
            run([script, "start"], what=f"{script} start", timeout=CTL_TIMEOUT)
        run(["update-rc.d", name, "enable"], what=f"update-rc.d {name} enable", check=False)

    def log_file(self, name: str) -> str:
        return os.path.join(self.log_dir, f"{_checked(name)}.log")

    def _ctl(self, *args: str) -> tuple[int, str]:
        """supervisorctl's exit code and output (it prints its errors on stdout)."""
        if shutil.which("supervisorctl") is None:
            raise HostError("supervisorctl is not installed: apt-get install supervisor")
        argv = ["supervisorctl", "-c", self.config, *args]
        result = run(argv, what=f"supervisorctl {args[0]}", timeout=CTL_TIMEOUT, check=False)
        return result.returncode, (result.stdout + result.stderr).strip()

    def _fail(self, what: str, output: str) -> HostError:
        """The error of a failed supervisorctl: supervisord out of reach, or what it said."""
        if not os.path.exists(self.config):
            return HostError(
                f"no supervisord configuration at {self.config}: apt-get install supervisor, "
                "or set supervisor_config"
            )
        code, probe = self._ctl("pid")
        if code != 0 or not probe.isdigit():
            return HostError(
                f"supervisord is not running for {self.config} ({probe}): start it with "
                f"`service supervisor start` (or `supervisord -c {self.config}`)"
            )
        lines = output.splitlines() or ["it printed nothing"]
        return HostError(f"supervisorctl {what} failed: {lines[-1]}")

    def _update(self, name: str) -> None:
        code, out = self._ctl("reread")
        if code != 0:
            raise self._fail("reread", out)
        code, out = self._ctl("update", name)
        if code != 0 and "no such group" in out and os.path.exists(self._conf(name)):
            raise HostError(
                f"supervisord does not read {self._conf(name)}: add {self.conf_dir}/*.conf to "
                f"`files` under [include] in {self.config}"
            )
        if code != 0 and "no such group" not in out:
            raise self._fail(f"update {name}", out)

    def install(self, spec: ProcessSpec) -> None:
        home = _check_user(spec.user)
        path = self._conf(spec.name)
        previous = _read_own(path)
        enabled = previous is not None and "\nautostart=true\n" in previous
        log_file = self.log_file(spec.name)
        text = render_program(spec, log_file=log_file, autostart=enabled, home=home)
        os.makedirs(self.log_dir, mode=0o750, exist_ok=True)
        _write_atomic(path, text)
        try:
            # a program that was running is restarted on its new definition
            self._update(spec.name)
        except BaseException:
            # one unreadable file stops supervisord from reading any: put back what was
            if previous is None:
                os.remove(path)
            else:
                _write_atomic(path, previous)
            raise

    def uninstall(self, name: str) -> None:
        path = self._conf(name)
        if _read_own(path) is not None:
            os.remove(path)
        code, probe = self._ctl("pid")
        if code != 0 or not probe.isdigit():
            return  # supervisord is down: nothing runs, and it will not load the file again
        self._update(name)  # stops it and forgets it

    def _enable(self, name: str, on: bool) -> None:
        path = self._conf(name)
        text = _read_own(path)
        if text is None:
            raise HostError(f"{name} is not installed: no {path}")
        old, new = "\nautostart=false\n", "\nautostart=true\n"
        if not on:
            old, new = new, old
        if old in text:
            # supervisord's loaded copy keeps the old flag: it only matters when it loads
            # the program again, and then it reads this file
            _write_atomic(path, text.replace(old, new))

    def _act(self, verb: str, name: str) -> None:
        code, out = self._ctl(verb, name)
        # "already started" and "not running" come with exit code 0: nothing to do
        if "spawn error" in out or "abnormal termination" in out:
            _, status = self._ctl("status", name)
            parts = status.split(None, 2)  # NAME STATE why
            why = parts[2] if len(parts) == 3 else "it exited"
            why = why.replace(" (process log may have details)", "").lower()
            # supervisord logs why it could not spawn (no such directory…), then this line
            said = [
                ln for ln in self.logs(name, 2) if ln != "supervisor: child process was not spawned"
            ]
            last = f"; its last output: {said[-1]}" if said else ""
            raise HostError(f"{name} did not start ({why}){last}; its log: {self.log_file(name)}")
        if "no such file" in out:
            raise HostError(
                f"{name} did not start: its program is missing (see {self._conf(name)})"
            )
        if "no such process" in out:
            raise HostError(f"supervisord has not loaded {name}: install it again")
        if code != 0:
            raise self._fail(f"{verb} {name}", out)

    def start(self, name: str) -> None:
        self._enable(name, True)
        self._act("start", name)

    def stop(self, name: str) -> None:
        self._enable(name, False)
        self._act("stop", name)

    def restart(self, name: str) -> None:
        self._enable(name, True)
        self._act("restart", name)

    def state(self, name: str) -> str:
        code, out = self._ctl("status", _checked(name))
        if "no such process" in out:
            return "absent"
        words = out.split()
        if code not in (0, 3) or len(words) < 2 or words[0] != name:
            raise self._fail(f"status {name}", out)
        return SUPERVISOR_STATES.get(words[1], "failed")

    def logs(self, name: str, lines: int = 100) -> list[str]:
        return tail(self.log_file(name), lines)


# --- files -----------------------------------------------------------------------------


def tail(path: str, lines: int) -> list[str]:
    """The last `lines` lines of a text file, read from its end; [] when it is absent."""
    if lines <= 0:
        return []
    try:
        with open(path, "rb") as f:
            end = f.seek(0, os.SEEK_END)
            data = b""
            while end > 0 and data.count(b"\n") <= lines:
                start = max(0, end - 65536)
                f.seek(start)
                data = f.read(end - start) + data
                end = start
    except FileNotFoundError:
        return []
    return data.decode("utf-8", errors="replace").splitlines()[-lines:]


def _checked(name: str) -> str:
    if not NAME_RE.match(name):
        raise UsageError(f"{name!r} is not a process name isidorus gives")
    return name


def _check_user(user: str) -> str:
    """The user's home; HostError when there is no such user."""
    try:
        return pwd.getpwnam(user).pw_dir
    except KeyError:
        raise HostError(f"no system user {user!r}: create it first (useradd --system)") from None


def _plain_path(path: str, what: str, name: str) -> None:
    if path != path.strip() or COMMENT_RE.search(path):
        raise UsageError(
            f"{name}: the {what} {path!r} starts or ends with a space, or has ';' or '#' "
            "after one; choose another"
        )


def _read_own(path: str) -> str | None:
    """The file isidorus wrote at `path`, None when there is none; HostError when someone
    else's file is there."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    if MARK not in text.split("\n", 1)[0]:
        raise HostError(
            f"{path} was not written by isidorus: move it away, or rename the service's process"
        )
    return text


def _write_atomic(path: str, text: str) -> None:
    """Replace `path` in one step (readers see the old file or the new one). Mode 0600:
    the environment may hold secrets."""
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        raise HostError(f"no folder {folder}: is the process manager installed?")
    # a dot name without the .conf/.service ending: the manager never reads it half-written
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
