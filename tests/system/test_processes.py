"""Services' processes: the files written for systemd and supervisord, read back by their own
parsers, and a real supervisord running, restarting, stopping and forgetting programs."""

from __future__ import annotations

import http.client
import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from isidorus.errors import UsageError
from isidorus.system import processes
from isidorus.system.errors import HostError
from isidorus.system.processes import (
    ProcessManager,
    ProcessSpec,
    SupervisordManager,
    SystemdManager,
    process_manager,
    render_program,
    render_unit,
    tail,
)
from tests.pg import free_port
from tests.system.supervisor import running_supervisord, supervisord_config

# arguments and values that a careless quoting would split, cut at a comment or expand
ARGS = ("two words", "q\"uo'te", "50%", "x ;y", "#z", ";", "", "back\\slash", "$HOME", "élan")
ENV = {
    "GREETING": "hello world",
    "PERCENT": "100% (%(ENV_HOME)s)",
    "QUOTED": 'say "hi" now',
    "APOSTROPHE": "it's",
    "COMMA": "a,b=c",
    "EMPTY": "",
}


def make_spec(name: str = "isidorus-echo", **kw: object) -> ProcessSpec:
    values: dict[str, object] = {
        "command": ("/usr/bin/printf", *ARGS),
        "user": "nobody",
        "directory": "/tmp/a dir",
        "environment": ENV,
        "description": "Echo (100%)",
    }
    values.update(kw)
    return ProcessSpec(name=name, **values)  # type: ignore[arg-type]


# --- specs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"name": "Bad Name"}, "process name"),
        ({"name": "a:b"}, "process name"),
        ({"command": ()}, "full path"),
        ({"command": ("printf", "x")}, "full path"),
        ({"user": "root;x"}, "Unix user"),
        ({"directory": "relative"}, "absolute"),
        ({"environment": {"A-B": "x"}}, "environment variable name"),
        ({"environment": {"A": "one\ntwo"}}, "newline"),
        ({"command": ("/bin/echo", "a\nb")}, "newline"),
        ({"description": "a\rb"}, "newline"),
    ],
)
def test_a_spec_refuses_what_no_process_file_can_hold(kw, message):
    with pytest.raises(UsageError, match=message):
        make_spec(**kw)


# --- supervisord's files ---------------------------------------------------------------

PARSE_WITH_SUPERVISOR = """
import json, shlex, sys
from supervisor.options import ServerOptions, UnhosedConfigParser
parser = UnhosedConfigParser()
parser.read(sys.argv[1])
config = ServerOptions().processes_from_section(parser, "program:" + sys.argv[2], sys.argv[2])[0]
print(json.dumps({
    "argv": shlex.split(config.command),  # what supervisord's spawn does
    "environment": config.environment,
    "directory": config.directory,
    "uid": config.uid,
    "autostart": config.autostart,
    "log": config.stdout_logfile,
    "redirect_stderr": config.redirect_stderr,
}))
"""


def supervisor_parses(path: Path, name: str) -> dict[str, Any]:
    """What supervisord's own parser reads in a program file (Debian's package, run by the
    system's Python)."""
    p = subprocess.run(
        ["/usr/bin/python3", "-c", PARSE_WITH_SUPERVISOR, str(path), name],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if "No module named 'supervisor'" in p.stderr:
        pytest.fail("supervisor is not installed: apt-get install supervisor (scripts/test does)")
    assert p.returncode == 0, p.stderr
    read: dict[str, Any] = json.loads(p.stdout)
    return read


def test_supervisors_own_parser_reads_back_every_argument_and_value(tmp_path):
    spec = make_spec()
    path = tmp_path / "isidorus-echo.conf"
    (tmp_path / "logs").mkdir()  # supervisord refuses a log in a missing folder
    log = str(tmp_path / "logs" / "isidorus-echo.log")
    path.write_text(render_program(spec, log_file=log, autostart=False, home="/nonexistent"))
    read = supervisor_parses(path, spec.name)
    assert read["argv"] == list(spec.command)
    assert read["environment"] == {
        "HOME": "/nonexistent",
        "USER": "nobody",
        "LOGNAME": "nobody",
        **ENV,
    }
    assert read["directory"] == "/tmp/a dir"
    assert read["uid"] == pwd.getpwnam("nobody").pw_uid
    assert read["autostart"] is False
    assert read["log"] == log
    assert read["redirect_stderr"] is True


def test_a_program_file_says_how_supervisord_keeps_it():
    text = render_program(make_spec(), log_file="/l/x.log", autostart=True, home="/h")
    lines = text.splitlines()
    assert lines[0].startswith("; Written by isidorus")
    assert lines[1:3] == ["; Echo (100%)", "[program:isidorus-echo]"]
    for line in (
        "autostart=true",
        "autorestart=true",
        "startsecs=2",
        "stopasgroup=true",
        "killasgroup=true",
        "redirect_stderr=true",
        "stdout_logfile=/l/x.log",
        "stdout_logfile_maxbytes=10MB",
        "user=nobody",
        "directory=/tmp/a dir",
    ):
        assert line in lines
    assert 'command=/usr/bin/printf "two words" "q\\"uo\'te" 50%% "x "\\;"y" \\#"z" \\;' in text


@pytest.mark.parametrize(
    ("environment", "directory", "message"),
    [
        ({"A": "both ' and \""}, "/srv", "both kinds"),
        ({"A": '"starts'}, "/srv", "starts or ends with a quote"),
        ({"A": "ends'"}, "/srv", "starts or ends with a quote"),
        ({"A": "x ;comment"}, "/srv", "starts a comment"),
        ({"A": "x #comment"}, "/srv", "starts a comment"),
        ({}, "/srv/a #b", "after one"),
        ({}, "/srv/trailing ", "ends with a space"),
    ],
)
def test_supervisord_refuses_values_its_parser_would_change(environment, directory, message):
    spec = make_spec(environment=environment, directory=directory)
    with pytest.raises(UsageError, match=message):
        render_program(spec, log_file="/l/x.log", autostart=False, home="/h")


def test_a_log_folder_supervisord_would_expand_is_refused():
    with pytest.raises(UsageError, match="service_log_dir"):
        SupervisordManager("/etc/supervisor/supervisord.conf", "/etc/supervisor/conf.d", "/l/%x")


# --- systemd's files -------------------------------------------------------------------


def test_a_unit_quotes_per_systemds_rules():
    lines = render_unit(make_spec()).splitlines()
    assert lines[0].startswith("# Written by isidorus")
    assert (
        "ExecStart=/usr/bin/printf "
        '"two words" "q\\"uo\'te" "50%%" "x ;y" "#z" ";" "" "back\\\\slash" "$$HOME" "élan"'
    ) in lines
    assert 'Environment="GREETING=hello world"' in lines
    assert 'Environment="PERCENT=100%% (%%(ENV_HOME)s)"' in lines
    assert 'Environment="QUOTED=say \\"hi\\" now"' in lines
    assert 'Environment="EMPTY="' in lines
    for line in (
        "Description=Echo (100%%)",
        "User=nobody",
        "WorkingDirectory=/tmp/a dir",
        "Type=exec",
        "Restart=on-failure",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "ProtectSystem=full",
        "WantedBy=multi-user.target",
    ):
        assert line in lines


def test_plain_arguments_stay_unquoted():
    spec = make_spec(command=("/usr/bin/radicale", "--config", "/etc/isidorus/radicale/config"))
    assert "ExecStart=/usr/bin/radicale --config /etc/isidorus/radicale/config" in render_unit(spec)


def test_systemd_analyze_accepts_the_unit(tmp_path):
    assert shutil.which("systemd-analyze"), "apt-get install systemd (scripts/test does)"
    (tmp_path / "isidorus-echo.service").write_text(render_unit(make_spec(directory="/tmp")))
    p = subprocess.run(
        ["systemd-analyze", "verify", "isidorus-echo.service"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert p.returncode == 0, p.stderr
    assert "ignoring" not in p.stderr, p.stderr


def test_process_manager_is_systemd_when_it_is_pid1(monkeypatch):
    monkeypatch.setattr(processes, "systemd_is_pid1", lambda: True)
    manager = process_manager({"systemd_unit_dir": "/units"})
    assert isinstance(manager, SystemdManager)
    assert (manager.kind, manager.unit_dir) == ("systemd", "/units")
    monkeypatch.setattr(processes, "systemd_is_pid1", lambda: False)
    manager = process_manager({"service_log_dir": "/logs"})
    assert isinstance(manager, SupervisordManager)
    assert manager.kind == "supervisord"
    assert manager.config == "/etc/supervisor/supervisord.conf"  # the setting's default
    assert (manager.conf_dir, manager.log_dir) == ("/etc/supervisor/conf.d", "/logs")


@pytest.mark.parametrize("kind", ["systemd", "supervisord"])
def test_a_file_isidorus_did_not_write_is_left_alone(tmp_path, kind):
    if kind == "systemd":
        manager: SystemdManager | SupervisordManager = SystemdManager(str(tmp_path))
        path = tmp_path / "isidorus-echo.service"
    else:
        manager = SupervisordManager(str(tmp_path / "none.conf"), str(tmp_path), "/l")
        path = tmp_path / "isidorus-echo.conf"
    path.write_text("[program:isidorus-echo]\ncommand=/bin/true\n")
    with pytest.raises(HostError, match="not written by isidorus: move it away"):
        manager.install(make_spec(directory="/tmp"))
    with pytest.raises(HostError, match="not written by isidorus"):
        manager.uninstall("isidorus-echo")
    assert path.read_text() == "[program:isidorus-echo]\ncommand=/bin/true\n"


def test_an_unknown_user_is_refused_before_anything_is_written(tmp_path):
    manager = SystemdManager(str(tmp_path))
    with pytest.raises(HostError, match="no system user 'no-such-user-x'"):
        manager.install(make_spec(user="no-such-user-x"))
    assert list(tmp_path.iterdir()) == []
    assert manager.state("isidorus-echo") == "absent"


def test_tail_reads_the_last_lines_from_the_end(tmp_path):
    path = tmp_path / "log"
    path.write_text("".join(f"line {i}\n" for i in range(20000)))
    assert tail(str(path), 3) == ["line 19997", "line 19998", "line 19999"]
    assert len(tail(str(path), 15000)) == 15000
    assert tail(str(path), 0) == []
    assert tail(str(tmp_path / "absent"), 10) == []


# --- a real supervisord ----------------------------------------------------------------

ECHO = r"""
import http.server, json, os, sys
print("GREETING is", os.environ.get("GREETING"), flush=True)
print("argv", json.dumps(sys.argv[2:]), file=sys.stderr, flush=True)

class Echo(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"pid": os.getpid(), "uid": os.getuid(), "cwd": os.getcwd(),
                           "argv": sys.argv[2:], "env": dict(os.environ)}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Echo).serve_forever()
"""


@pytest.fixture(scope="module")
def supervisord(tmp_path_factory):
    """The settings of this module's own supervisord."""
    with running_supervisord(tmp_path_factory.mktemp("supervisord")) as settings:
        yield settings


@pytest.fixture
def manager(supervisord):
    m = process_manager(supervisord)
    assert isinstance(m, SupervisordManager), "this machine runs systemd: no supervisord test"
    return m


@pytest.fixture
def workdir():
    """A folder `nobody` can enter and read (pytest's are private to their owner)."""
    path = Path(tempfile.mkdtemp(prefix="isidorus-proc-", dir="/tmp"))
    path.chmod(0o755)
    (path / "echo.py").write_text(ECHO)
    yield path
    shutil.rmtree(path)


def echo_spec(workdir: Path, port: int, name: str = "isidorus-echo", **env: str) -> ProcessSpec:
    return ProcessSpec(
        name=name,
        command=("/usr/bin/python3", "-u", str(workdir / "echo.py"), str(port), *ARGS),
        user="nobody",
        directory=str(workdir),
        environment={**ENV, **env},
        description="A test's echo server",
    )


def ask(port: int, timeout: float = 20) -> dict[str, Any]:
    """The echo server's answer, waiting for it to listen."""
    deadline = time.monotonic() + timeout
    while True:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", "/")
            answer: dict[str, Any] = json.loads(conn.getresponse().read())
            return answer
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
        finally:
            conn.close()


def refused(port: int) -> bool:
    try:
        http.client.HTTPConnection("127.0.0.1", port, timeout=5).request("GET", "/")
    except ConnectionRefusedError:
        return True
    return False


def wait_for_state(manager: ProcessManager, name: str, state: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (now := manager.state(name)) != state:
        assert time.monotonic() < deadline, f"{name} is still {now}, not {state}"
        time.sleep(0.2)


@pytest.mark.root
@pytest.mark.slow
def test_a_service_runs_restarts_stops_and_goes_under_supervisord(manager, supervisord, workdir):
    port = free_port()
    conf = Path(supervisord["supervisor_conf_dir"]) / "isidorus-echo.conf"
    manager.install(echo_spec(workdir, port))
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600  # the environment may hold secrets
    assert manager.state("isidorus-echo") == "stopped"  # installed, not started
    assert refused(port)

    manager.start("isidorus-echo")
    assert manager.state("isidorus-echo") == "running"
    seen = ask(port)
    assert seen["uid"] == pwd.getpwnam("nobody").pw_uid
    assert seen["cwd"] == str(workdir)
    assert seen["argv"] == list(ARGS)
    assert {k: seen["env"][k] for k in ENV} == ENV
    assert (seen["env"]["HOME"], seen["env"]["USER"]) == ("/nonexistent", "nobody")
    logs = manager.logs("isidorus-echo")
    assert "GREETING is hello world" in logs
    assert f"argv {json.dumps(list(ARGS))}" in logs  # stderr goes to the same log
    assert manager.logs("isidorus-echo", 1) == logs[-1:]

    manager.restart("isidorus-echo")
    assert manager.state("isidorus-echo") == "running"
    assert ask(port)["pid"] != seen["pid"]

    manager.stop("isidorus-echo")
    assert manager.state("isidorus-echo") == "stopped"
    assert refused(port)
    assert "autostart=false" in conf.read_text()  # stays stopped when supervisord restarts
    manager.stop("isidorus-echo")  # again: nothing to do

    manager.start("isidorus-echo")
    assert "autostart=true" in conf.read_text()  # comes back when supervisord restarts
    manager.uninstall("isidorus-echo")
    assert manager.state("isidorus-echo") == "absent"
    assert not conf.exists()
    assert refused(port)
    manager.uninstall("isidorus-echo")  # again: nothing to do


@pytest.mark.root
@pytest.mark.slow
def test_installing_again_replaces_the_program_and_starts_nothing(manager, workdir):
    port = free_port()
    manager.install(echo_spec(workdir, port, name="isidorus-again", GREETING="one"))
    manager.start("isidorus-again")
    assert ask(port)["env"]["GREETING"] == "one"
    # running: supervisord restarts it on its new definition
    manager.install(echo_spec(workdir, port, name="isidorus-again", GREETING="two"))
    wait_for_state(manager, "isidorus-again", "running")
    assert ask(port)["env"]["GREETING"] == "two"
    manager.stop("isidorus-again")
    # stopped: it stays so
    manager.install(echo_spec(workdir, port, name="isidorus-again", GREETING="three"))
    time.sleep(1)
    assert manager.state("isidorus-again") == "stopped"
    assert refused(port)
    manager.uninstall("isidorus-again")


@pytest.mark.root
@pytest.mark.slow
def test_a_program_that_exits_at_once_fails_with_its_output(manager, workdir):
    spec = ProcessSpec(
        name="isidorus-crash",
        command=("/bin/sh", "-c", "echo 'about to fail' >&2; exit 3"),
        user="nobody",
        directory=str(workdir),
    )
    manager.install(spec)
    with pytest.raises(HostError, match="isidorus-crash did not start .*about to fail"):
        manager.start("isidorus-crash")
    wait_for_state(manager, "isidorus-crash", "failed")  # after supervisord's retries
    assert "about to fail" in manager.logs("isidorus-crash")
    manager.uninstall("isidorus-crash")
    assert manager.state("isidorus-crash") == "absent"


@pytest.mark.root
def test_actions_on_a_program_that_is_not_installed_say_so(manager):
    for action in (manager.start, manager.stop, manager.restart):
        with pytest.raises(HostError, match="isidorus-nothing is not installed: no /"):
            action("isidorus-nothing")
    assert manager.state("isidorus-nothing") == "absent"
    assert manager.logs("isidorus-nothing") == []


@pytest.mark.root
def test_a_programs_folder_supervisord_does_not_read_is_named(supervisord, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    manager = SupervisordManager(supervisord["supervisor_config"], str(elsewhere), "/tmp/l")
    with pytest.raises(HostError, match=r"supervisord does not read .*\[include\]"):
        manager.install(make_spec(directory="/tmp"))
    assert list(elsewhere.iterdir()) == []  # put back as it was


def test_without_supervisord_one_line_names_the_fix(tmp_path):
    if shutil.which("supervisorctl") is None:
        pytest.fail("supervisor is not installed: apt-get install supervisor (scripts/test does)")
    conf_dir = tmp_path / "programs"
    conf_dir.mkdir()
    socket = Path(tempfile.mkdtemp(dir="/tmp")) / "none.sock"
    config = supervisord_config(tmp_path, socket, conf_dir)
    manager = SupervisordManager(str(config), str(conf_dir), str(tmp_path / "logs"))
    fix = "supervisord is not running for .*: start it with `service supervisor start`"
    with pytest.raises(HostError, match=fix) as caught:
        manager.state("isidorus-echo")
    assert "\n" not in str(caught.value)
    with pytest.raises(HostError, match=fix):
        manager.install(make_spec(directory="/tmp"))
    assert list(conf_dir.iterdir()) == []  # nothing left half-installed
    manager.uninstall("isidorus-echo")  # nothing runs: nothing to do
    os.rmdir(socket.parent)

    missing = SupervisordManager(str(tmp_path / "no.conf"), str(conf_dir), "/tmp/l")
    with pytest.raises(HostError, match="no supervisord configuration at .*apt-get install"):
        missing.state("isidorus-echo")
