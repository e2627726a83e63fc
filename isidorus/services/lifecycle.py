"""Installing and removing a service on this host, all or nothing.

An install is a row of steps: packages, the system user, directories, the software's own
environment (PyPI, npm), configuration files, the process, the health check, then the nginx
site. Each step that changes the host records how to take it back in a journal; when a
step fails, the journal is played backwards, so a failed install leaves the host as it
was, and the error says which step failed and why. What an install added (packages that
were not there before, a user it made, directories it made) is returned, so that a removal
with `purge` takes away exactly that.

Nothing here touches the state database: `ops/services.py` records what happened.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from isidorus.services import databases
from isidorus.services.errors import ServiceError
from isidorus.services.health import port_holder, port_is_free, wait_healthy
from isidorus.services.manifest import Database, Manifest
from isidorus.services.render import Placement, command, environment, render_config
from isidorus.system import packages, users
from isidorus.system.acme import RETRY, Acme
from isidorus.system.errors import HostError
from isidorus.system.nginx import Nginx, Site
from isidorus.system.processes import ProcessManager, ProcessSpec
from isidorus.system.tls import self_signed

Say = Callable[[str], None]


@dataclass(frozen=True)
class Machinery:
    """The host's programs an install drives, and where services live."""

    processes: ProcessManager
    nginx: Nginx
    data_root: str  # a service's data in DATA_ROOT/<id>
    config_root: str  # its configuration in CONFIG_ROOT/<id>
    tls_dir: str | None  # certificates; None: sites over plain http (local use, tests)
    http_port: int = 80
    https_port: int = 443
    acme: Acme | None = None  # services_tls = acme: certificates from the CA, see certify()
    # the directory's settings for services that sign members in by LDAP (see Placement)
    ldap: Mapping[str, Any] | None = None


@dataclass
class Added:
    """What an install added to the host (and so what a purge takes away)."""

    packages: list[str] = field(default_factory=list)
    user: str = ""  # the system user, when the install made it
    directories: list[str] = field(default_factory=list)
    # configuration files it wrote outside its own folders (an application's conf.d)
    files: list[str] = field(default_factory=list)
    databases: list[str] = field(default_factory=list)  # server databases it made, by name

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Added:
        return cls(
            packages=list(doc.get("packages", [])),
            user=str(doc.get("user", "")),
            directories=list(doc.get("directories", [])),
            files=list(doc.get("files", [])),
            databases=list(doc.get("databases", [])),
        )


class Journal:
    """How to take back each step done so far, played backwards on failure."""

    def __init__(self, say: Say) -> None:
        self.say = say
        self.undo: list[tuple[str, Callable[[], None]]] = []

    def did(self, what: str, undo: Callable[[], None]) -> None:
        self.undo.append((what, undo))

    def roll_back(self) -> list[str]:
        """Undo every step, newest first; returns what could not be undone."""
        failed = []
        for what, undo in reversed(self.undo):
            self.say(f"undoing: {what}")
            try:
                undo()
            except Exception as exc:  # noqa: BLE001 - go on undoing the rest
                failed.append(f"{what}: {exc}")
        self.undo.clear()
        return failed


def process_name(service: str) -> str:
    return f"isidorus-{service}"


def process_spec(manifest: Manifest, where: Placement) -> ProcessSpec:
    """How the process manager runs the service (a manifest with a `command`)."""
    return ProcessSpec(
        name=process_name(manifest.id),
        command=command(manifest, where),
        user=where.user,
        directory=where.data_dir,
        environment=environment(manifest, where),
        description=f"{manifest.name} ({manifest.id}), installed by isidorus",
    )


def health_problem(processes: ProcessManager, manifest: Manifest, port: int) -> str | None:
    """Wait for the service's health check (or its process to stop): None when healthy,
    else the problem, with the last lines the service wrote."""
    name = process_name(manifest.id)
    problem = wait_healthy(
        manifest.health, port, lambda: processes.state(name) in ("running", "starting")
    )
    if problem is None:
        return None
    tail = processes.logs(name, 5)
    return problem + (f"; its last output: {' | '.join(tail)}" if tail else "")


def placement(machinery: Machinery, manifest: Manifest, domain: str, path: str) -> Placement:
    return Placement(
        service=manifest.id,
        domain=domain,
        path=path,
        port=manifest.run.port,
        user=manifest.run.user,
        data_dir=os.path.join(machinery.data_root, manifest.id),
        config_dir=os.path.join(machinery.config_root, manifest.id),
        ldap=machinery.ldap if manifest.sso.kind == "ldap" else None,
        mysql_socket=databases.mysql_socket(),
    )


def site(
    machinery: Machinery, manifest: Manifest, where: Placement, allow: tuple[str, ...]
) -> Site:
    web = manifest.web
    tls = None
    if machinery.acme is not None:
        # what the domain has now, the CA's or a self-signed stand-in: the CA is asked
        # only once the site is up (certify), never when a site is merely published again
        tls = machinery.acme.current(where.domain)
    elif machinery.tls_dir is not None:
        tls = self_signed(where.domain, machinery.tls_dir)
    return Site(
        service=manifest.id,
        domain=where.domain,
        path=where.path,
        port=where.port,
        sso=manifest.sso.kind,
        sso_header=manifest.sso.header,
        allow=allow,
        tls=tls,
        listen_http=machinery.http_port,
        listen_https=machinery.https_port,
        fastcgi_root=where.fill(web.root) if web.kind == "fastcgi" and web.root else None,
        index=web.index,
        front_controller=web.front_controller,
        deny=tuple(web.deny),
        upstream_host=web.host,
        aliases=tuple(web.aliases.items()),
        basic=manifest.sso.basic,
    )


def has_site(manifest: Manifest) -> bool:
    """Whether nginx publishes the service (not a voice server, say)."""
    return manifest.web.kind != "none"


def publish(
    machinery: Machinery, manifest: Manifest, where: Placement, allow: tuple[str, ...]
) -> None:
    """Publish (or publish anew) the service's site; nothing for a service without one."""
    if has_site(manifest):
        machinery.nginx.publish(site(machinery, manifest, where, allow))


def host_steps(
    machinery: Machinery,
    manifest: Manifest,
    where: Placement,
    journal: Journal,
    say: Say,
    made: Callable[[Database], None] = lambda _db: None,
) -> list[tuple[str, Callable[[], None]]]:
    """What readies the host's own services for the service, as (step, do) in order, for
    an install and for an upgrade alike: stop the system's copies it takes over, start the
    system services it needs, make its server databases (each one made is in the journal
    and told to `made`)."""

    def take_over(unit: str) -> None:
        say(f"stopping the system's own {unit}: isidorus runs {manifest.id} itself")
        machinery.processes.take_over(unit)

    def bring_up(unit: str) -> None:
        say(f"starting {unit}, which {manifest.id} needs")
        machinery.processes.bring_up(unit)

    def provision(db: Database) -> None:
        say(f"making the {db.kind} database {db.name}, owned by {where.user}")
        if databases.provision(db, where.user):
            journal.did(f"database {db.name}", functools.partial(databases.drop, db))
            made(db)

    steps: list[tuple[str, Callable[[], None]]] = [
        (f"stopping the system's own {u}", functools.partial(take_over, u))
        for u in manifest.run.take_over
    ]
    steps += [(f"starting {u}", functools.partial(bring_up, u)) for u in manifest.run.needs]
    steps += [
        (f"making the {db.kind} database {db.name}", functools.partial(provision, db))
        for db in manifest.data.databases
        if db.kind != "sqlite"
    ]
    return steps


def _debian_packages(manifest: Manifest) -> list[str]:
    wanted = list(manifest.source.debian)
    if manifest.source.pypi:
        wanted += [p for p in packages.VENV_DEBIAN if p not in wanted]
    if manifest.source.npm:
        wanted += [p for p in packages.NPM_DEBIAN if p not in wanted]
    return wanted


def install(
    machinery: Machinery,
    manifest: Manifest,
    templates: Path,
    where: Placement,
    allow: tuple[str, ...],
    say: Say,
    record: Callable[[Added], None] | None = None,
) -> Added:
    """Install, start and publish the service; on any failure, undo everything and raise
    ServiceError naming the step. `record` is told what the install has added so far,
    after each step that adds something, so that a purge can take it away even when this
    process is killed midway."""
    note = record or (lambda _added: None)
    if manifest.run.unit is not None and machinery.processes.kind != "systemd":
        raise ServiceError(
            f"{manifest.id} runs as the unit {manifest.run.unit} of its Debian package, which "
            "needs systemd; this host has none as PID 1"
        )
    if manifest.sso.kind == "ldap" and where.ldap is None:
        raise ServiceError(
            f"{manifest.id} signs members in through the LDAP directory, and this host has "
            "none for services: add [ldap] with services_bind_dn and "
            "services_bind_password_file to isidorus.toml (docs/directory.md)"
        )
    if not port_is_free(where.port):
        raise ServiceError(
            f"port {where.port}, which {manifest.id} listens on, is already in use"
            f"{_held_by(where.port)}: stop it, or remove the service that has it"
        )
    added = Added()
    journal = Journal(say)
    step = "checking"
    try:
        step = "installing packages"
        debian = _debian_packages(manifest)
        if debian:
            say(f"installing {', '.join(debian)}")
            added.packages = packages.apt_install(debian)
            note(added)
            if added.packages:
                new = list(added.packages)
                journal.did(f"packages {', '.join(new)}", lambda: packages.apt_remove(new))

        step = "creating the system user"
        if users.ensure_system_user(where.user, where.data_dir):
            added.user = where.user
            note(added)
            journal.did(f"user {where.user}", lambda: users.remove_system_user(where.user))

        step = "creating directories"
        for d, owner, mode in (
            (where.data_dir, where.user, 0o750),
            (where.config_dir, "root", 0o755),
        ):
            if users.make_directory(d, owner, mode):
                added.directories.append(d)
                note(added)
                journal.did(f"directory {d}", functools.partial(_rmtree, d))

        def made(db: Database) -> None:
            added.databases.append(db.name)
            note(added)

        for named, do in host_steps(machinery, manifest, where, journal, say, made):
            step = named  # what a failure is said to have stopped
            do()

        for d in manifest.run.directories:
            users.make_directory(
                where.fill(d), where.user, 0o750
            )  # inside data_dir: undone with it

        if manifest.source.pypi:
            step = "installing from PyPI"
            say(f"installing {', '.join(manifest.source.pypi)} into {where.data_dir}/env")
            packages.venv_install(os.path.join(where.data_dir, "env"), manifest.source.pypi)
        if manifest.source.npm:
            step = "installing from npm"
            say(f"installing {', '.join(manifest.source.npm)}")
            packages.npm_install(os.path.join(where.data_dir, "node"), manifest.source.npm)

        step = "writing the configuration"
        for path, text, mode in render_config(manifest, templates, where):
            outside = not path.startswith(where.config_dir + "/")
            if outside and not os.path.exists(path):
                added.files.append(path)
                note(added)
            _write_config(path, text, mode, where.user, journal)

        step = "starting the service"
        name = process_name(manifest.id)
        if manifest.run.command is not None:
            machinery.processes.install(process_spec(manifest, where))
            journal.did(f"process {name}", lambda: machinery.processes.uninstall(name))
            machinery.processes.start(name)

        step = "waiting for the service to be healthy"
        say(f"waiting for {manifest.id} to answer on port {where.port}")
        problem = health_problem(machinery.processes, manifest, where.port)
        if problem is not None:
            raise ServiceError(problem)

        if has_site(manifest):
            step = "publishing it behind nginx"
            publish(machinery, manifest, where, allow)
            journal.did("nginx site", lambda: machinery.nginx.unpublish(manifest.id))
    except (ServiceError, HostError, OSError) as exc:
        failed = journal.roll_back()
        left = (
            f"; could not undo: {'; '.join(failed)}" if failed else "; everything it did was undone"
        )
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        if step == "starting the service" and not port_is_free(where.port):
            why += f"; port {where.port} is in use{_held_by(where.port)}"
        raise ServiceError(f"installing {manifest.id} failed while {step}: {why}{left}") from None
    certify(machinery, manifest, where, allow, say)
    return added


def certify(
    machinery: Machinery, manifest: Manifest, where: Placement, allow: tuple[str, ...], say: Say
) -> bool:
    """With ACME, get the domain's certificate from the CA and publish the site again with
    it. The site must be up already: the CA checks the domain over http, and nginx needed a
    certificate (self-signed) to start its https server. A failure never fails the install:
    the site keeps its self-signed certificate and `say` gets one warning line with the
    cause and the command that retries. Whether the site now has the CA's certificate."""
    if machinery.acme is None or not has_site(manifest):
        return False
    say(f"asking {machinery.acme.directory} for a certificate for {where.domain}")
    try:
        machinery.acme.issue(where.domain)
        publish(machinery, manifest, where, allow)
    except HostError as exc:
        retry = "" if RETRY in str(exc) else f"; retry with {RETRY}"
        say(f"warning: {where.domain} keeps its self-signed certificate: {exc}{retry}")
        return False
    return True


def _held_by(port: int) -> str:
    holder = port_holder(port)
    return f" by {holder}" if holder else " (`ss -ltnp` tells by what)"


def _rmtree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _write_config(path: str, text: str, mode: int, user: str, journal: Journal) -> None:
    existed = os.path.exists(path)
    before = Path(path).read_bytes() if existed else None
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.isidorus-tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, mode)
    # root owns it, the service's group reads it: the service cannot rewrite its own config
    shutil.chown(tmp, "root", user)
    os.replace(tmp, path)

    def undo() -> None:
        if before is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        else:
            Path(path).write_bytes(before)

    journal.did(f"file {path}", undo)


def remove(
    machinery: Machinery,
    manifest: Manifest,
    added: Added,
    *,
    purge: bool,
    keep_packages: frozenset[str] = frozenset(),
    say: Say,
) -> list[str]:
    """Stop and unpublish the service; with `purge`, also take away what its install
    added (data, configuration, user, packages). Returns what could not be removed; goes
    on past each failure so that a half-removed service can be removed again."""
    problems = []
    steps: list[tuple[str, Callable[[], None]]] = [
        ("nginx site", lambda: machinery.nginx.unpublish(manifest.id)),
        ("process", lambda: machinery.processes.uninstall(process_name(manifest.id))),
    ]
    if purge:
        steps += [(f"directory {d}", functools.partial(_rmtree, d)) for d in added.directories]
        steps += [(f"file {f}", functools.partial(_unlink, f)) for f in added.files]
        steps += [
            (f"database {db.name}", functools.partial(databases.drop, db))
            for db in manifest.data.databases
            if db.name in added.databases
        ]
        if added.user:
            steps.append((f"user {added.user}", lambda: users.remove_system_user(added.user)))
        # packages that another installed service needs stay
        gone = [p for p in added.packages if p not in keep_packages]
        if gone:
            steps.append((f"packages {', '.join(gone)}", lambda: packages.apt_remove(gone)))
    for what, do in steps:
        say(f"removing {what}")
        try:
            do()
        except (HostError, OSError) as exc:
            problems.append(f"{what}: {exc}")
    return problems
