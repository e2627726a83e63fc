"""ssh's process as `remote/ssh.py` starts it (posix_spawn, not subprocess): pipes to its
stdin, stdout and stderr, a session of its own, and an end that is always reaped."""

import os
import signal
import subprocess
import sys

import pytest

from isidorus.backup.remote.ssh import Child, SshPipe, SshTarget
from isidorus.errors import UsageError


@pytest.fixture
def spawn():
    children = []

    def start(argv):
        children.append(Child(argv))
        return children[-1]

    yield start
    for child in children:
        child.kill()
        child.wait(10)
        for f in (child.stdin, child.stdout, child.stderr):
            f.close()


def test_pipes_session_and_exit_code(spawn):
    child = spawn(["sh", "-c", 'read line; echo "got $line"; echo oops >&2; exit 3'])
    assert os.getsid(child.pid) == child.pid  # a Ctrl-C at the terminal does not reach it
    child.stdin.write(b"hello\n")
    child.stdin.close()
    assert child.stdout.read() == b"got hello\n"
    assert child.stderr.read() == b"oops\n"
    assert child.wait(10) == 3 and child.poll() == 3


def test_a_child_that_runs_on_is_waited_for_then_killed(spawn):
    child = spawn(["sleep", "30"])
    assert child.wait(0.05) is None and child.poll() is None
    child.kill()
    assert child.wait(10) == -signal.SIGKILL
    child.kill()  # once more: already reaped, nothing to do


def test_sigpipe_is_the_default_in_the_child(spawn):
    """Python ignores SIGPIPE; its children get the default back, as subprocess does."""
    child = spawn(["sh", "-c", "grep SigIgn /proc/self/status"])
    mask = int(child.stdout.read().split()[1], 16)
    child.wait(10)
    assert not mask & (1 << (signal.SIGPIPE - 1))


def test_a_missing_ssh_is_a_one_line_error():
    with pytest.raises(UsageError, match="no-such-ssh was not found: install OpenSSH's client"):
        SshPipe(SshTarget("ssh", "home", None, None, "/x"), ["no-such-ssh", "home"])


def test_a_parent_without_standard_streams_still_gives_the_child_its_own():
    """A parent started with 0, 1 and 2 closed: the pipes land there, and must not
    overwrite one another in the child."""
    code = (
        "import os\n"
        "for fd in (0, 1, 2): os.close(fd)\n"
        "from isidorus.backup.remote.ssh import Child\n"
        "c = Child(['sh', '-c', 'read x; echo out-$x; echo err-$x >&2'])\n"
        "c.stdin.write(b'1\\n'); c.stdin.close()\n"
        "out, err = c.stdout.read(), c.stderr.read()\n"
        "c.wait(10)\n"
        "c.stdout.close(); c.stderr.close()\n"
        "open(os.environ['RESULT'], 'wb').write(out + b'|' + err)\n"
    )
    result = f"/tmp/isidorus-child-{os.getpid()}"
    try:
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "RESULT": result},
            stdin=subprocess.DEVNULL,
            check=True,
            timeout=30,
        )
        with open(result, "rb") as f:
            assert f.read() == b"out-1\n|err-1\n"
    finally:
        if os.path.exists(result):
            os.unlink(result)
