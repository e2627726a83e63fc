"""Upgrading an installed service to its catalog's manifest, with a way back.

The new software is made ready first, while the old one still runs: a PyPI service's new
venv is built in `env.new`, an npm service's packages in `node.new`. A failure there changes
nothing. Then the service stops, and each change is recorded in a journal as it is made:
Debian packages upgraded (`apt-get install --only-upgrade`) or added, the new venv renamed
into place (the old one kept as `env.old`), the configuration rendered again, the process
definition rewritten; then the service starts and must pass its health check, and its
nginx site is written again. On any failure the journal is played backwards (packages back
at their previous versions, `env.old` back as `env`), the data is put back from the
snapshot taken before (by a function the caller gives: only when the new software may have
run against it), and the old version starts again.

Nothing here touches the state database or the backup store: `ops/services.py` does.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from isidorus.services.errors import ServiceError
from isidorus.services.health import port_is_free
from isidorus.services.lifecycle import (
    Journal,
    Machinery,
    _debian_packages,
    _write_config,
    health_problem,
    host_steps,
    process_name,
    process_spec,
    publish,
)
from isidorus.services.manifest import Manifest
from isidorus.services.render import Placement, render_config
from isidorus.system import packages, users
from isidorus.system.errors import HostError

Say = Callable[[str], None]


def upgrade(
    machinery: Machinery,
    old: Manifest,
    new: Manifest,
    templates: Path,
    places: tuple[Placement, Placement],
    allow: tuple[str, ...],
    restore_data: Callable[[], str],
    say: Say,
) -> list[str]:
    """Replace the running `old` version by `new` (placed at `places`: the old one's, the
    new one's). Returns the Debian packages the upgrade added. On failure, puts the old
    version back, calls `restore_data` (which returns the time of the data it put back)
    once the new software may have touched the data, restarts the old version and raises
    ServiceError: what failed, and in which state the service is."""
    was, where = places
    if new.run.user != old.run.user:
        raise ServiceError(
            f"{new.id} {new.version} runs as {new.run.user}, not {old.run.user}: a change of "
            f"user is not an upgrade; remove {new.id} and install it again"
        )
    if new.run.unit is not None and machinery.processes.kind != "systemd":
        raise ServiceError(f"{new.id} {new.version} runs as a unit of systemd; this host has none")
    if where.port != was.port and not port_is_free(where.port):
        raise ServiceError(
            f"{new.id} {new.version} listens on port {where.port}, which is in use: free it first"
        )
    name = process_name(new.id)
    journal = Journal(say)
    added: list[str] = []
    staged: list[tuple[str, str]] = []  # (new directory, its final name)
    stopped = touched = False
    step = "checking"
    try:
        if new.source.pypi:
            step = "installing from PyPI"
            env = os.path.join(where.data_dir, "env")
            say(f"installing {', '.join(new.source.pypi)} into {env}.new")
            _fresh(env + ".new", journal)
            packages.venv_install(env + ".new", new.source.pypi)
            staged.append((env + ".new", env))
        if new.source.npm:
            step = "installing from npm"
            node = os.path.join(where.data_dir, "node")
            say(f"installing {', '.join(new.source.npm)} into {node}.new")
            _fresh(node + ".new", journal)
            packages.npm_install(node + ".new", new.source.npm)
            staged.append((node + ".new", node))

        step = "stopping the service"
        say(f"stopping {new.id} {old.version}")
        machinery.processes.stop(name)
        stopped = True

        debian = _debian_packages(new)
        if debian:
            step = "upgrading packages"
            # the service's own packages are upgraded; python3-venv, npm… need only be there
            touched = bool(new.source.debian)  # maintainer scripts may migrate data
            added = packages.apt_install(debian)
            if added:
                new_ones = list(added)
                journal.did(f"packages {', '.join(added)}", lambda: packages.apt_remove(new_ones))
            own = [p for p in new.source.debian if p not in added]
            if own:
                say(f"upgrading {', '.join(own)}")
            previous = packages.apt_upgrade(own)
            if previous:
                journal.did(
                    f"packages back at {', '.join(f'{p} {v}' for p, v in previous.items())}",
                    lambda: packages.apt_downgrade(previous),
                )

        # what a new version needs, or takes over, too
        for named, do in host_steps(machinery, new, where, journal, say):
            step = named  # what a failure is said to have stopped
            do()

        step = "putting the new software in place"
        for built, final in staged:
            _swap_in(built, final, journal)

        step = "writing the configuration"
        for d in new.run.directories:  # a new version's new folders; kept on the way back
            users.make_directory(where.fill(d), where.user, 0o750)
        for path, text, mode in render_config(new, templates, where):
            _write_config(path, text, mode, where.user, journal)

        step = "starting the service"
        if new.run.command is not None:
            machinery.processes.install(process_spec(new, where))
            if old.run.command is not None:
                spec = process_spec(old, was)
                journal.did(f"process {name}", lambda: machinery.processes.install(spec))
        touched = True
        machinery.processes.start(name)

        step = "waiting for the service to be healthy"
        say(f"waiting for {new.id} {new.version} to answer on port {where.port}")
        problem = health_problem(machinery.processes, new, where.port)
        if problem is not None:
            raise ServiceError(problem)

        step = "publishing it behind nginx"
        publish(machinery, new, where, allow)
    except (ServiceError, HostError, OSError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        head = f"upgrade of {new.id} to {new.version} failed while {step}: {why}"
        if not stopped:
            journal.roll_back()
            raise ServiceError(
                f"{head}; nothing changed: {new.id} is still at {old.version}"
            ) from None
        raise ServiceError(
            head + _go_back(machinery, old, was, journal, restore_data if touched else None)
        ) from None
    for _built, final in staged:  # the old software goes only once the new one works
        shutil.rmtree(final + ".old", ignore_errors=True)
    return added


def _go_back(
    machinery: Machinery,
    old: Manifest,
    was: Placement,
    journal: Journal,
    restore_data: Callable[[], str] | None,
) -> str:
    """Put the old version back and start it; what to add to the error, in words."""
    name = process_name(old.id)
    with contextlib.suppress(HostError):  # a new version may be restarting in a loop
        machinery.processes.stop(name)
    failed = journal.roll_back()
    data = "its data untouched"
    if restore_data is not None:
        try:
            data = f"its data of {restore_data()}"
        except Exception as exc:  # noqa: BLE001 - the service must still be started again
            data = f"its data NOT restored ({exc}): restore it with `isidorus service restore`"
    try:
        machinery.processes.start(name)
        problem = health_problem(machinery.processes, old, was.port)
    except HostError as exc:
        problem = str(exc)
    said = f"; {old.id} is back at {old.version} with {data}"
    if failed:
        said += f"; could not undo: {'; '.join(failed)}"
    if problem:
        said += f"; but it is not healthy: {problem}"
    return said


def _fresh(path: str, journal: Journal) -> None:
    """An empty place for new software; a left-over of an interrupted upgrade goes first."""
    shutil.rmtree(path, ignore_errors=True)
    journal.did(f"directory {path}", lambda: shutil.rmtree(path, ignore_errors=True))


def _swap_in(built: str, final: str, journal: Journal) -> None:
    """Rename `built` to `final`, keeping what was there as `final`.old until the upgrade
    succeeds (renames: the old software is back in an instant)."""
    if os.path.isdir(os.path.join(built, "bin")) and os.path.exists(
        os.path.join(built, "pyvenv.cfg")
    ):
        packages.venv_retarget(built, final)
    kept = final + ".old"
    shutil.rmtree(kept, ignore_errors=True)
    had = os.path.lexists(final)
    if had:
        os.rename(final, kept)
    try:
        os.rename(built, final)
    except OSError:
        if had:
            os.rename(kept, final)
        raise

    def undo() -> None:
        shutil.rmtree(final, ignore_errors=True)
        if had:
            os.rename(kept, final)

    journal.did(f"{final} of the new version", undo)
