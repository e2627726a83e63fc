"""A supervisord of the tests' own: Debian's program with a configuration in a temporary
directory (its own socket, pid file, log and programs folder), run in the foreground as the
test's child and stopped at the end, whatever happened. Debian's own supervisord, if the
package started one, is left alone.

    with running_supervisord(tmp_path) as settings:
        manager = process_manager(settings)   # supervisord wherever systemd is not PID 1

Programs that run as another user (`user=nobody`) need the tests to run as root.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

TIMEOUT = 30  # seconds to start or stop

CONFIG = """\
[unix_http_server]
file={socket}
chmod=0700

[supervisord]
logfile={root}/supervisord.log
pidfile={root}/supervisord.pid
childlogdir={root}

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{socket}

[include]
files = {conf_dir}/*.conf
"""


def supervisord_config(root: Path, socket: Path, conf_dir: Path) -> Path:
    """Write a supervisord.conf in `root` that reads its programs from `conf_dir`."""
    config = root / "supervisord.conf"
    config.write_text(CONFIG.format(root=root, socket=socket, conf_dir=conf_dir))
    return config


def _answers(config: Path) -> bool:
    p = subprocess.run(
        ["supervisorctl", "-c", str(config), "pid"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    return p.returncode == 0 and p.stdout.strip().isdigit()


@contextlib.contextmanager
def running_supervisord(root: Path) -> Iterator[dict[str, str]]:
    """Start supervisord with its files in `root`; yield the settings that point isidorus
    at it (supervisor_config, supervisor_conf_dir, service_log_dir); stop it at the end
    (it stops its programs first)."""
    if shutil.which("supervisord") is None:
        pytest.fail("supervisord is not installed: apt-get install supervisor (scripts/test does)")
    conf_dir = root / "supervisor.d"
    conf_dir.mkdir(parents=True)
    # a short folder for the socket: pytest's paths can pass the 108 bytes a socket's may have
    socket_dir = Path(tempfile.mkdtemp(prefix="isidorus-sv-", dir="/tmp"))
    config = supervisord_config(root, socket_dir / "supervisor.sock", conf_dir)
    with open(root / "supervisord.out", "wb") as out:
        proc = subprocess.Popen(
            ["supervisord", "--nodaemon", "-c", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + TIMEOUT
        while not _answers(config):
            if proc.poll() is not None or time.monotonic() > deadline:
                log = (root / "supervisord.out").read_text(errors="replace").strip()
                pytest.fail(f"supervisord did not start: {log.splitlines()[-1:] or proc.poll()}")
            time.sleep(0.1)
        yield {
            "supervisor_config": str(config),
            "supervisor_conf_dir": str(conf_dir),
            "service_log_dir": str(root / "logs"),
        }
    finally:
        proc.terminate()
        try:
            proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(TIMEOUT)
        shutil.rmtree(socket_dir, ignore_errors=True)
