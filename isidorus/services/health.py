"""Whether a service works: its manifest's check, on its loopback port."""

from __future__ import annotations

import http.client
import re
import socket
import subprocess
import time
from collections.abc import Callable

from isidorus.services.manifest import Health


def check(health: Health, port: int, timeout: float = 5.0) -> str | None:
    """None when healthy, else what is wrong, in a few words."""
    try:
        if health.tcp:
            with socket.create_connection(("127.0.0.1", port), timeout=timeout):
                return None
        assert health.http is not None
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            conn.request("GET", health.http, headers={"Host": "127.0.0.1"})
            status = conn.getresponse().status
        finally:
            conn.close()
    except OSError as exc:
        return f"port {port}: {exc.strerror or exc}"
    except http.client.HTTPException as exc:
        return f"port {port}: not HTTP ({type(exc).__name__})"
    if status not in health.expect:
        return f"GET {health.http} answered {status}, not {', '.join(map(str, health.expect))}"
    return None


def wait_healthy(
    health: Health, port: int, still_running: Callable[[], bool] | None = None
) -> str | None:
    """Wait up to the manifest's timeout for the check to pass; None when it did, else the
    last problem. Gives up early when `still_running` says the process is gone."""
    deadline = time.monotonic() + health.timeout
    problem: str | None = "not checked"
    while time.monotonic() < deadline:
        problem = check(health, port)
        if problem is None:
            return None
        if still_running is not None and not still_running():
            return f"the process stopped ({problem})"
        time.sleep(0.5)
    return f"not healthy after {health.timeout} s: {problem}"


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def port_holder(port: int) -> str:
    """Who listens on `port`, as `ss` names it ("copyparty, pid 812"); "" when nobody does
    or `ss` cannot tell."""
    try:
        out = subprocess.run(
            ["ss", "-H", "-ltnp", f"sport = :{port}"],
            capture_output=True, text=True, timeout=10, check=False,
        ).stdout  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return ""
    found = re.findall(r'\("([^"]+)",pid=(\d+)', out)
    return "; ".join(f"{name}, pid {pid}" for name, pid in dict.fromkeys(found))
