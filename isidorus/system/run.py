"""Running the host's programs: one place that turns their failures into one line."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence

from isidorus.system.errors import HostError, HostTimeout

DEFAULT_TIMEOUT = 600.0  # seconds: an apt-get install on a slow mirror takes minutes


def run(
    argv: Sequence[str],
    *,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    cwd: str | None = None,
    what: str = "",
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a program to the end; HostError names it and the last line it printed when it
    fails, is missing or takes longer than `timeout` seconds. `env` adds to the
    environment. `check=False` returns a failed run instead, for callers whose program's
    most telling line is not its last one (npm) or whose exit codes are not all errors."""
    name = what or os.path.basename(argv[0])
    full_env = {**os.environ, **env} if env is not None else None
    try:
        result = subprocess.run(
            list(argv),
            input=input,
            env=full_env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
    except FileNotFoundError:
        raise HostError(f"{argv[0]} is not installed (needed for {name})") from None
    except subprocess.TimeoutExpired:
        raise HostTimeout(f"{name} did not finish in {timeout:.0f} s: {' '.join(argv)}") from None
    if check and result.returncode != 0:
        raise HostError(f"{name} failed (exit {result.returncode}): {last_line(result)}")
    return result


def last_line(result: subprocess.CompletedProcess[str]) -> str:
    """The most telling line a failed program printed: its last one on stderr, else stdout."""
    for text in (result.stderr, result.stdout):
        lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
        if lines:
            return lines[-1]
    return "it printed nothing"
