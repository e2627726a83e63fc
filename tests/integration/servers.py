"""Starting and stopping the real servers of the tests: free ports, waiting, cleanup."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    for _ in range(200):  # 10 s at most
        if proc.poll() is not None:
            raise AssertionError(
                f"{what} exited: {proc.stderr.read().decode() if proc.stderr else ''}"
            )
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"{what} did not listen on {port}")


def stop(procs: Iterable[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.terminate()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)
        if p.stderr is not None:
            p.stderr.close()
