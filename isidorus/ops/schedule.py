"""When the nightly job runs: a systemd timer where systemd is PID 1, else isidorus's own
scheduler (`isidorus schedule run`) kept running by supervisord.

Both run `isidorus nightly` at `[nightly] time` (local time) plus a random delay of up to
`[nightly] random_delay`, never two at once (the job's own lock), and a night missed while
the server was off runs when it is back: systemd's `Persistent=true`, or the scheduler's
comparison of the latest run with the latest time one was due.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from isidorus.errors import IsidorusError
from isidorus.ops import runs
from isidorus.ops.accounts import audit
from isidorus.ops.jobs_config import NightlyConfig
from isidorus.state.db import Database
from isidorus.system.errors import HostError
from isidorus.system.processes import (
    ProcessSpec,
    process_manager,
    systemd_environment,
    systemd_is_pid1,
    systemd_word,
)
from isidorus.system.run import run

NAME = "isidorus-nightly"
SCHEDULER = "isidorus-scheduler"
MARK_FILE = "schedule.json"  # in the data directory: when the schedule was set up
KEPT = ("ISIDORUS_CONFIG",)
NAP = 60.0  # the scheduler looks at the clock at least this often (it may be changed)


@dataclass(frozen=True)
class ScheduleStatus:
    kind: str  # "systemd timer", "isidorus scheduler", or "none"
    time: str
    random_delay: float
    state: str  # what the timer or the scheduler's process says
    next_due: datetime | None  # the next planned time, before the random delay
    last_run: runs.Run | None

    def to_json(self) -> dict[str, Any]:
        last = self.last_run
        return {
            "kind": self.kind,
            "time": self.time,
            "random_delay_seconds": self.random_delay,
            "state": self.state,
            "next_due": self.next_due.astimezone(UTC).isoformat() if self.next_due else None,
            "last_run": None if last is None else last.to_json(with_log=False),
        }


def command(data_dir: str, *args: str) -> list[str]:
    """How the timer or the scheduler calls isidorus: this very program, this data dir."""
    return [sys.executable, "-m", "isidorus", *args, "--data-dir", data_dir]


def install(
    db: Database, actor: str, data_dir: str, conf: Mapping[str, Any], nightly: NightlyConfig
) -> str:
    """Set up the schedule (again, with the current configuration); what was set up, also
    written to the audit log. HostError when systemctl or supervisorctl fails."""
    what = _install(data_dir, conf, nightly)
    with db.write() as conn:
        audit(conn, actor, "schedule.install", "", what)
    return what


def _install(data_dir: str, conf: Mapping[str, Any], nightly: NightlyConfig) -> str:
    _mark(data_dir)
    if systemd_is_pid1():
        unit_dir = str(conf["systemd_unit_dir"])
        argv = command(data_dir, "nightly")
        _write(os.path.join(unit_dir, f"{NAME}.service"), service_unit(argv, passed_environment()))
        _write(os.path.join(unit_dir, f"{NAME}.timer"), timer_unit(nightly))
        run(["systemctl", "daemon-reload"], what="systemctl daemon-reload")
        run(["systemctl", "enable", "--now", f"{NAME}.timer"], what="systemctl enable")
        return f"systemd timer {NAME}.timer: every day at {nightly.time}"
    manager = process_manager(conf)
    spec = ProcessSpec(
        name=SCHEDULER,
        command=tuple(command(data_dir, "schedule", "run")),
        user="root",
        directory="/",
        environment=passed_environment(),
        description="isidorus's scheduler: runs the nightly job",
    )
    manager.install(spec)
    manager.restart(SCHEDULER)
    return f"isidorus scheduler under {manager.kind}: every day at {nightly.time}"


def remove(db: Database, actor: str, conf: Mapping[str, Any]) -> None:
    """Stop running the nightly job on its own (nothing to do when it is not scheduled);
    written to the audit log. HostError when systemctl or supervisorctl fails."""
    _remove(conf)
    with db.write() as conn:
        audit(conn, actor, "schedule.remove")


def _remove(conf: Mapping[str, Any]) -> None:
    if systemd_is_pid1():
        unit_dir = str(conf["systemd_unit_dir"])
        timer = os.path.join(unit_dir, f"{NAME}.timer")
        if os.path.exists(timer):
            run(["systemctl", "disable", "--now", f"{NAME}.timer"], what="systemctl disable")
        for suffix in ("timer", "service"):
            path = os.path.join(unit_dir, f"{NAME}.{suffix}")
            if os.path.exists(path):
                os.remove(path)
        run(["systemctl", "daemon-reload"], what="systemctl daemon-reload")
        return
    process_manager(conf).uninstall(SCHEDULER)


def status(
    db: Database, data_dir: str, conf: Mapping[str, Any], nightly: NightlyConfig
) -> ScheduleStatus:
    latest = runs.list_runs(db, kind="nightly", limit=1)
    last = latest[0] if latest else None
    if systemd_is_pid1():
        path = os.path.join(str(conf["systemd_unit_dir"]), f"{NAME}.timer")
        if not os.path.exists(path):
            return ScheduleStatus("none", nightly.time, nightly.random_delay, "absent", None, last)
        state = run(["systemctl", "is-active", f"{NAME}.timer"], check=False).stdout.strip()
        kind = "systemd timer"
    else:
        try:
            state = process_manager(conf).state(SCHEDULER)
        except HostError as exc:
            state = f"unknown ({exc})"
        if state == "absent":
            return ScheduleStatus("none", nightly.time, nightly.random_delay, state, None, last)
        kind = "isidorus scheduler"
    return ScheduleStatus(
        kind, nightly.time, nightly.random_delay, state, next_slot(nightly, _now()), last
    )


# --- the timer's files -----------------------------------------------------------------


def service_unit(argv: list[str], environment: dict[str, str] | None = None) -> str:
    env = "".join(
        f"Environment={systemd_environment(k, v)}\n" for k, v in (environment or {}).items()
    )
    return (
        "# Written by isidorus: `isidorus schedule install` replaces it\n"
        "[Unit]\n"
        "Description=isidorus nightly job: backups, copies to the homes, checks\n"
        "After=network-online.target\n"
        "Wants=network-online.target\n"
        "\n"
        "[Service]\n"
        "Type=oneshot\n"
        f"{env}"
        f"ExecStart={' '.join(systemd_word(a) for a in argv)}\n"
        "Nice=10\n"
        "IOSchedulingClass=idle\n"
    )


def timer_unit(nightly: NightlyConfig) -> str:
    return (
        "# Written by isidorus: `isidorus schedule install` replaces it\n"
        "[Unit]\n"
        "Description=isidorus nightly job, every day\n"
        "\n"
        "[Timer]\n"
        f"OnCalendar=*-*-* {nightly.time}:00\n"
        f"RandomizedDelaySec={int(nightly.random_delay)}\n"
        "Persistent=true\n"
        "\n"
        "[Install]\n"
        "WantedBy=timers.target\n"
    )


def _write(path: str, text: str) -> None:
    if not os.path.isdir(os.path.dirname(path)):
        raise HostError(f"no folder {os.path.dirname(path)}: is systemd installed?")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def passed_environment() -> dict[str, str]:
    """What the scheduled nights get of this environment: the configuration file's place
    and PATH. Settings go in that file: other ISIDORUS_ variables are not kept (see
    `unkept`), since the nights must not depend on the shell that set them up."""
    keep = {k: os.environ[k] for k in KEPT if k in os.environ}
    keep["PATH"] = os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    return keep


def unkept() -> list[str]:
    """The ISIDORUS_ variables of this environment that the scheduled nights will not see."""
    return sorted(k for k in os.environ if k.startswith("ISIDORUS_") and k not in KEPT)


def _mark(data_dir: str) -> None:
    os.makedirs(data_dir, exist_ok=True)
    path = os.path.join(data_dir, MARK_FILE)
    if not os.path.exists(path):
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"installed_at": datetime.now(UTC).isoformat()}, f)


def _installed_at(data_dir: str) -> datetime | None:
    try:
        with open(os.path.join(data_dir, MARK_FILE), encoding="utf-8") as f:
            return datetime.fromisoformat(json.load(f)["installed_at"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# --- isidorus's own scheduler ----------------------------------------------------------


def _now() -> datetime:
    return datetime.now().astimezone()


def last_slot(nightly: NightlyConfig, now: datetime) -> datetime:
    """The latest time the job was due, at or before `now` (local time)."""
    today = now.replace(hour=nightly.hour, minute=nightly.minute, second=0, microsecond=0)
    return today if today <= now else today - timedelta(days=1)


def next_slot(nightly: NightlyConfig, now: datetime) -> datetime:
    return last_slot(nightly, now) + timedelta(days=1)


def missed(nightly: NightlyConfig, now: datetime, last_start: datetime | None,
           since: datetime | None) -> bool:  # fmt: skip
    """Whether a night was due since the latest run (or since the schedule was set up,
    when there was none) and none ran."""
    seen = max((t for t in (last_start, since) if t is not None), default=None)
    return seen is not None and seen < last_slot(nightly, now)


def serve(
    db: Database,
    data_dir: str,
    load_nightly: Callable[[], NightlyConfig],
    say: Callable[[str], None],
    *,
    rounds: int | None = None,
) -> None:
    """Run the nightly job when due, forever (or for `rounds` runs): each time at the
    configured time plus a random delay, and at once when a night was missed. The
    configuration is read again before each wait, so a change needs no restart."""
    _mark(data_dir)
    done = 0
    while rounds is None or done < rounds:
        try:
            nightly = load_nightly()
        except IsidorusError as exc:  # a file being edited, say: the nights go on after
            say(f"cannot read the schedule ({exc}): trying again in a minute")
            time.sleep(NAP)
            continue
        now = _now()
        latest = runs.list_runs(db, kind="nightly", limit=1)
        last_start = latest[0].started_at if latest else None
        if missed(nightly, now, last_start, _installed_at(data_dir)):
            say(
                f"the night due at {last_slot(nightly, now):%Y-%m-%d %H:%M} was missed: running now"
            )
        else:
            due = next_slot(nightly, now) + timedelta(
                seconds=random.uniform(0, nightly.random_delay)
            )
            say(f"next night at {due:%Y-%m-%d %H:%M:%S}")
            if not _sleep_until(due, load_nightly, nightly):
                continue  # the configuration changed: plan again
        _run_night(data_dir, say)
        done += 1


def _sleep_until(
    due: datetime, load_nightly: Callable[[], NightlyConfig], planned: NightlyConfig
) -> bool:
    """Sleep until `due`, looking at the clock and the configuration every NAP seconds;
    False when the schedule changed meanwhile."""
    while True:
        left = (due - _now()).total_seconds()
        if left <= 0:
            return True
        time.sleep(min(left, NAP))
        try:
            current = load_nightly()
        except Exception:  # a file being edited: keep the plan
            continue
        if (current.hour, current.minute) != (planned.hour, planned.minute):
            return False


def _run_night(data_dir: str, say: Callable[[str], None]) -> None:
    argv = command(data_dir, "nightly")
    say(f"running {shlex.join(argv)}")
    result = subprocess.run(argv, stdin=subprocess.DEVNULL, check=False)
    say(f"the nightly job ended with exit code {result.returncode}")
