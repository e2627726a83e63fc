"""Updates of the host: what is pending (`check_updates`), and applying it with a way back
(`apply_updates`), for the command line and the nightly job.

Pending are the Debian packages that `apt-get upgrade` would upgrade (each marked security
or not, by the archive of its new version), and the installed services whose catalog
manifest has another version. An update is one run in the jobs history (kind "update"),
made of these steps, in this order:

    snapshot  packages   the installed versions of what apt will change, to go back to
    snapshot  SERVICE    each installed service's data in the host's store (backups
                         configured), or "skipped", saying no backup was taken
    apt       ""         the Debian upgrades, daemons held back
    upgrade   SERVICE    a service to its catalog's version (with its own backup and way
                         back: ops/services.upgrade)
    health    SERVICE    every installed service, restarted first when packages changed
    rollback  SERVICE    a service the Debian upgrade broke: its own Debian packages back
                         at their versions of before, restarted and checked again

A snapshot that fails stops the update before anything changes. One update at a time:
a flock on LOCK_PATH.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from isidorus import settings
from isidorus.errors import IsidorusError, UsageError
from isidorus.ops import runs, service_backups
from isidorus.ops import services as services_
from isidorus.ops.accounts import audit
from isidorus.ops.database import read_config
from isidorus.ops.runs import Recorder, Run, StepFailed
from isidorus.services import catalog as catalog_
from isidorus.services import installed, lifecycle
from isidorus.services.installed import Installed
from isidorus.state.db import Database
from isidorus.system import packages
from isidorus.system.errors import HostError
from isidorus.system.locks import only_one
from isidorus.system.packages import Upgrade

Say = Callable[[str], None]
LOCK_PATH = "/run/lock/isidorus-update.lock"


class UpdateError(IsidorusError):
    """An update cannot start: another one runs."""

    http_status = 409


def _quiet(_line: str) -> None:
    pass


@dataclass(frozen=True)
class ServiceUpdate:
    """An installed service whose catalog manifest has another version."""

    id: str
    version: str  # installed
    catalog_version: str

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "version": self.version, "catalog_version": self.catalog_version}


@dataclass(frozen=True)
class UpdateReport:
    packages: tuple[Upgrade, ...]
    services: tuple[ServiceUpdate, ...]
    refreshed: bool  # apt's lists were refreshed first (needs root)

    @property
    def empty(self) -> bool:
        return not self.packages and not self.services

    def to_json(self) -> dict[str, Any]:
        return {
            "refreshed": self.refreshed,
            "packages": [u.to_json() for u in self.packages],
            "services": [s.to_json() for s in self.services],
        }


def check_updates(db: Database, say: Say = _quiet, *, refresh: bool = True) -> UpdateReport:
    """What an update would apply now. As root and with `refresh`, apt's lists are
    refreshed first (`apt-get update`; when that fails, `say` warns and the lists of before
    are used); otherwise they are read as they are (`doctor` does not go to the mirrors).
    Changes nothing else. UsageError for a bad `apt_config`; HostError when apt cannot
    tell."""
    conf = settings.load()
    with _apt_configured(conf):
        refreshed = False
        if refresh and os.geteuid() == 0:
            refreshed = _refresh(say)
        elif refresh:
            say("not root: apt's lists are read as they are, without apt-get update")
        pending = packages.apt_upgradable()
    return UpdateReport(tuple(pending), tuple(_service_updates(db, conf)), refreshed)


def require_root() -> None:
    if os.geteuid() != 0:
        raise UsageError(
            "applying updates needs root (it runs apt and restarts services): run it as root"
        )


def check_idle() -> None:
    """UpdateError when an update runs now (the command line's, the nightly job's, or one
    the web started): told at once to the one who asks for another, before it starts."""
    with _only_one():
        pass


def apply_updates(db: Database, data_dir: str, *, security_only: bool, actor: str, say: Say) -> Run:
    """Apply what `check_updates` lists (with `security_only`, the Debian security upgrades
    alone, and no service upgrade), step by step as the module says, recording the run in
    the jobs history; returns the finished run: "ok" when every step was, else "failed"
    (a service rolled back is a failed health step). Needs root (UsageError). Before the
    run starts: UpdateError when another update runs; HostTimeout when another program
    holds apt's lock for longer than packages.APT_LOCK_WAIT; UsageError for a bad
    `apt_config`."""
    require_root()
    conf = settings.load()
    with _only_one(), _apt_configured(conf):
        busy = packages.apt_busy()
        if busy:  # unattended-upgrades, an apt in a shell: their end is waited for
            say(f"waiting for apt, up to {packages.APT_LOCK_WAIT:.0f} s: {busy}")
            packages.wait_for_apt()
        update = _Update(db, data_dir, conf, actor, say, security_only)
        update.run_id = runs.begin(db, "update")
        with db.write() as conn:
            audit(conn, actor, "update.start", str(update.run_id),
                  "security-only" if security_only else "")  # fmt: skip
        try:
            update.go()
        except BaseException:
            with contextlib.suppress(Exception):
                update.tell("the update was stopped before its end")
                runs.finish(db, update.run_id, "interrupted", update.log)
            raise
        done = runs.get_run(db, update.run_id)
        status = "failed" if any(s.status == "failed" for s in done.steps) else "ok"
        update.note(summary(done, status))  # for the history; the caller tells it its way
        with db.write() as conn:
            audit(conn, actor, "update" if status == "ok" else "update.failed",
                  str(update.run_id))  # fmt: skip
        return runs.finish(db, update.run_id, status, update.log)


def summary(run: Run, status: str | None = None) -> str:
    """The run in one line: what changed, and what failed or was rolled back."""
    status = status or run.status
    changed = sum(len(s.detail.get("upgraded", {})) for s in run.steps if s.step == "apt")
    upgraded = [s.target for s in run.steps if s.step == "upgrade" and s.status == "ok"]
    healthy = [s.target for s in run.steps if s.step == "health" and s.status == "ok"]
    parts = [f"{changed} Debian package(s) upgraded"]
    if upgraded:
        parts.append(f"{', '.join(upgraded)} upgraded")
    if healthy:
        parts.append(f"{len(healthy)} service(s) healthy")
    if status == "ok":
        if not changed and not upgraded and not any(s.step == "apt" for s in run.steps):
            parts[0] = "nothing to update"
        return f"update ok: {'; '.join(parts)}"
    back = [s.target for s in run.steps if s.step == "rollback" and s.status == "ok"]
    failed = [
        f"{s.step} {s.target}".strip()
        for s in run.steps
        if s.status == "failed" and not (s.step == "health" and s.target in back)
    ]
    if back:
        parts.append(f"rolled back, healthy again: {', '.join(back)}")
    if failed:
        parts.append(f"failed: {', '.join(failed)}")
    return f"update failed: {'; '.join(parts)}"


# the run


@dataclass
class _Update(Recorder):
    db: Database
    data_dir: str
    conf: Mapping[str, Any]
    actor: str
    say: Say
    security_only: bool
    run_id: int = 0
    lines: list[str] = field(default_factory=list)
    changed: dict[str, tuple[str, str]] = field(default_factory=dict)  # name: (old, new)
    upgraded: set[str] = field(default_factory=set)  # services upgraded (and restarted)
    _tools: lifecycle.Machinery | None = None

    @property
    def tools(self) -> lifecycle.Machinery:
        if self._tools is None:
            domain = str(read_config(self.data_dir).get("domain", "localhost"))
            self._tools = services_.machinery(self.conf, domain)
        return self._tools

    def services(self) -> list[Installed]:
        with self.db.read() as conn:
            found = installed.all_installed(conn)
        for s in found:
            if s.state != "installed":
                self.tell(f"{s.id} is being installed, or its install was interrupted: left out")
        return [s for s in found if s.state == "installed"]

    def go(self) -> None:
        if self.security_only:
            self.tell("security updates only: services are not upgraded")
        _refresh(self.tell)
        try:
            pending = packages.apt_upgradable()
            if self.security_only:
                pending = [u for u in pending if u.security]
            plan = packages.apt_upgrade_plan([u.name for u in pending])
        except HostError as exc:  # no way back can be recorded: nothing is done
            with self.step("snapshot", "packages"):
                raise StepFailed(str(exc)) from None
            self.tell("nothing was changed: apt cannot tell what it would upgrade")
            return
        upgrades = [] if self.security_only else _service_updates(self.db, self.conf)
        if not plan and not upgrades:
            self.tell("nothing to update")
        elif not self.snapshot(plan):
            self.tell("nothing was changed: a snapshot failed (see above); fix it, then retry")
            return
        if plan:
            self.apt([u.name for u in pending], plan)
        for s in upgrades:
            self.upgrade(s)
        self.check_health()

    def snapshot(self, plan: list[Upgrade]) -> bool:
        """The way back, before anything changes; False when a part of it failed."""
        ok = True
        if plan:
            with self.step("snapshot", "packages") as step:
                step.detail = {
                    "packages": {
                        u.name: {
                            "installed": u.installed,
                            "candidate": u.candidate,
                            "security": u.security,
                        }
                        for u in plan
                    }
                }
                self.tell(
                    "will upgrade "
                    + ", ".join(f"{u.name} {u.installed or '(new)'} -> {u.candidate}" for u in plan)
                )
            ok = step.status == "ok"
        found = self.services()
        if not found:
            return ok
        secret = str(self.conf["backup_passphrase_file"])
        if not os.path.exists(secret):
            why = (
                f"no backup taken: the backup passphrase file {secret} is missing "
                "(see backup_passphrase_file)"
            )
            self.tell(why)
            for s in found:
                with self.step("snapshot", s.id) as step:
                    step.status, step.error = "skipped", why
            return ok
        ref = None
        for s in found:
            with self.step("snapshot", s.id) as step:
                if ref is None:
                    ref = service_backups.store_ref(self.conf, create=True)
                if not self._has_data(s):
                    step.status = "skipped"
                    step.error = "nothing to back up: no path of its [data] exists"
                    self.tell(f"{s.id}: nothing to back up yet")
                    continue
                with service_backups.changing(s.id):
                    done = service_backups.take_backup(ref, self.tools, s, self.tell)
                snap = done.result.snapshot
                step.bytes = done.result.bytes_new
                step.detail = {"snapshot": snap.id, "version": s.version}
                self.tell(f"{s.id} {s.version}: snapshot {snap.short_id}")
            ok = ok and step.status != "failed"
        return ok

    def _has_data(self, s: Installed) -> bool:
        where = lifecycle.placement(self.tools, s.manifest, s.domain, s.path)
        paths = [where.fill(p) for p in s.manifest.data.paths]
        return bool(s.manifest.data.databases) or any(os.path.lexists(p) for p in paths)

    def apt(self, names: list[str], plan: list[Upgrade]) -> None:
        with self.step("apt") as step:
            before = packages.debian_versions([u.name for u in plan])
            try:
                self.tell(f"upgrading {', '.join(names)}")
                packages.apt_upgrade(names)
            finally:  # what did change, even when apt stopped midway
                after = packages.debian_versions([u.name for u in plan])
                self.changed = {
                    n: (v, after.get(n, "")) for n, v in before.items() if after.get(n) != v
                }
                new = sorted(n for n in after if n not in before)
                step.detail = {
                    "upgraded": {n: list(v) for n, v in sorted(self.changed.items())},
                    "installed": new,
                    "security_only": self.security_only,
                }
            self.tell(
                "upgraded "
                + (", ".join(f"{n} {o} -> {v}" for n, (o, v) in self.changed.items()) or "nothing")
            )

    def upgrade(self, service: ServiceUpdate) -> None:
        with self.step("upgrade", service.id) as step:
            done = services_.upgrade(self.db, self.data_dir, service.id, self.actor, self.tell)
            step.detail = {"from": done.old_version, "to": done.version,
                           "snapshot": done.snapshot}  # fmt: skip
            self.upgraded.add(service.id)
            self.tell(f"{service.id} upgraded from {done.old_version} to {done.version}")

    def check_health(self) -> None:
        """Every installed service; those the Debian upgrade broke go back."""
        found = self.services()
        broken: list[Installed] = []
        for s in found:
            name = lifecycle.process_name(s.id)
            with self.step("health", s.id) as step:
                restart = bool(self.changed) and s.id not in self.upgraded
                step.detail = {"version": s.version, "restarted": restart}
                problem = None
                if restart:  # so that it runs on the new packages
                    self.tell(f"restarting {s.id}")
                    try:
                        self.tools.processes.restart(name)
                    except HostError as exc:  # it did not start: as broken as can be
                        problem = str(exc)
                if problem is None:
                    problem = lifecycle.health_problem(self.tools.processes, s.manifest, s.port)
                if problem is not None:
                    mine = [p for p in s.manifest.source.debian if p in self.changed]
                    if mine:
                        broken.append(s)
                        raise StepFailed(f"after the upgrade of {', '.join(mine)}: {problem}")
                    raise StepFailed(
                        f"{problem}; none of its Debian packages changed in this update: "
                        f"see `isidorus service logs {s.id}`"
                    )
                self.tell(f"{s.id} is healthy")
        for s in broken:
            self.roll_back(s, found)

    def roll_back(self, s: Installed, found: list[Installed]) -> None:
        """Its Debian packages back at their versions of before the update; it, and the
        other services that have these packages, restarted and checked."""
        back = {p: self.changed[p][0] for p in s.manifest.source.debian if p in self.changed}
        name = lifecycle.process_name(s.id)
        with self.step("rollback", s.id) as step:
            step.detail = {"packages": back}
            with service_backups.changing(s.id):
                self.tell(f"{s.id}: putting back {', '.join(f'{p} {v}' for p, v in back.items())}")
                with contextlib.suppress(HostError):  # it may be restarting in a loop
                    self.tools.processes.stop(name)
                try:
                    packages.apt_downgrade(back)
                    for p in back:
                        self.changed.pop(p, None)
                finally:
                    try:
                        self.tools.processes.start(name)
                        problem = lifecycle.health_problem(self.tools.processes, s.manifest, s.port)
                    except HostError as exc:
                        problem = str(exc)
            others = self._restart_sharing(s, back, found)
            step.detail = {"packages": back, "health": problem or "ok", "others": others}
            if problem is not None:
                raise StepFailed(f"still not healthy with its packages of before: {problem}")
            held = " ".join(back)
            self.tell(
                f"{s.id} is healthy again with {', '.join(f'{p} {v}' for p, v in back.items())};"
                f" the next update upgrades them again: `apt-mark hold {held}` keeps them "
                "until a version that works comes"
            )
            if any(v != "ok" for v in others.values()):
                raise StepFailed(
                    "put back, but these services that share its packages are not healthy: "
                    + "; ".join(f"{k}: {v}" for k, v in others.items() if v != "ok")
                )

    def _restart_sharing(
        self, s: Installed, back: Mapping[str, str], found: list[Installed]
    ) -> dict[str, str]:
        out = {}
        for other in found:
            if other.id == s.id or not set(other.manifest.source.debian) & set(back):
                continue
            self.tell(f"restarting {other.id}, which has these packages too")
            try:
                self.tools.processes.restart(lifecycle.process_name(other.id))
                problem = lifecycle.health_problem(self.tools.processes, other.manifest, other.port)
            except HostError as exc:
                problem = str(exc)
            out[other.id] = problem or "ok"
        return out


# helpers


def _apt_configured(conf: Mapping[str, Any]) -> contextlib.AbstractContextManager[None]:
    path = str(conf["apt_config"])
    if path and not os.path.isfile(path):
        raise UsageError(
            f"apt_config = {path!r} is not a file: give an apt configuration file, or leave "
            "it empty for apt's own"
        )
    return packages.apt_config(path)


def _refresh(say: Say) -> bool:
    say("refreshing apt's lists (apt-get update)")
    try:
        packages.apt_refresh()
    except HostError as exc:
        say(f"warning: apt's lists could not be refreshed, those of before are used: {exc}")
        return False
    return True


def _service_updates(db: Database, conf: Mapping[str, Any]) -> list[ServiceUpdate]:
    known = catalog_.entries(str(conf["services_dir"]))
    ids = set(services_.upgradable(db))
    with db.read() as conn:
        found = installed.all_installed(conn)
    return [
        ServiceUpdate(s.id, s.version, known[s.id].manifest.version)
        for s in found
        if s.id in ids and s.state == "installed"
    ]


def _only_one() -> contextlib.AbstractContextManager[None]:
    def busy(pid: str) -> UpdateError:
        return UpdateError(
            f"another isidorus update is running (pid {pid}, lock {LOCK_PATH}): "
            "let it finish, then retry"
        )

    return only_one(LOCK_PATH, busy)
