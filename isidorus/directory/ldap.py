"""Talking to the LDAP server (ldap3): bind as isidorus, read the entries it owns, execute
a plan. Every ldap3 error becomes a DirectoryError here."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from ldap3 import BASE, LEVEL, MODIFY_REPLACE, NONE, Connection, Server
from ldap3.core.exceptions import (
    LDAPCommunicationError,
    LDAPEntryAlreadyExistsResult,
    LDAPException,
    LDAPInvalidCredentialsResult,
    LDAPNoSuchObjectResult,
    LDAPOperationResult,
    LDAPResponseTimeoutError,
)

from isidorus.directory.config import DirectoryConfig
from isidorus.directory.entries import (
    Change,
    DirectoryGroup,
    DirectoryUser,
    Entry,
    Layout,
    SyncPlan,
    desired_entries,
    plan_sync,
)
from isidorus.directory.errors import DirectoryError, DirectoryUnreachable

PERSON_ATTRIBUTES = ["objectClass", "uid", "cn", "sn", "displayName", "mail", "userPassword"]
GROUP_ATTRIBUTES = ["objectClass", "cn", "description", "member"]
PAGE_SIZE = 500  # slapd's default size limit


@dataclass(frozen=True)
class SyncResult:
    plan: SyncPlan
    problems: tuple[str, ...]  # one line for each entry the server refused


def sync(
    config: DirectoryConfig,
    users: Iterable[DirectoryUser],
    groups: Iterable[DirectoryGroup],
    *,
    dry_run: bool = False,
) -> SyncResult:
    """Make the directory hold exactly these users and groups: a full reconcile that adds,
    modifies and deletes entries, and changes nothing when all is in step (so running it
    twice, or from two processes at once, is safe). An entry the server refuses is
    reported in `problems` and the others are still written; DirectoryUnreachable when
    the server cannot be reached, DirectoryError when it refuses isidorus itself."""
    layout = Layout(config.base_dn)
    desired = desired_entries(users, groups, layout)
    with Directory(config) as directory:
        found = directory.read(layout, [e.dn for e in desired if not e.owned])
        plan = plan_sync(desired, found)
        problems = () if dry_run else tuple(directory.apply(plan))
    return SyncResult(plan, problems)


class Directory:
    """A connection bound as isidorus's bind DN; closed by `close()` or `with`. Not for
    sharing between threads: each sync opens its own."""

    def __init__(self, config: DirectoryConfig) -> None:
        self.config = config
        server = Server(
            config.host,
            port=config.port,
            get_info=NONE,
            connect_timeout=config.timeout,
        )
        self.conn = Connection(
            server,
            user=config.bind_dn,
            password=config.bind_password,
            raise_exceptions=True,
            receive_timeout=config.timeout,
        )
        try:
            with self._errors("the bind"):
                self.conn.open()
                self.conn.bind()
        except DirectoryError:
            self.close()
            raise

    def __enter__(self) -> Directory:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(LDAPException):
            self.conn.unbind()
        # ldap3 keeps the socket of a connection that failed to open: close it here
        if self.conn.socket is not None:
            self.conn.socket.close()

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        url, bind_dn = self.config.url, self.config.bind_dn
        try:
            yield
        except (LDAPCommunicationError, LDAPResponseTimeoutError) as exc:
            raise DirectoryUnreachable(
                f"cannot reach the LDAP directory at {url} ({exc}): is slapd running there?"
            ) from None
        except LDAPInvalidCredentialsResult:
            raise DirectoryError(
                f"the LDAP directory at {url} refused isidorus's bind as {bind_dn}: "
                "check bind_dn and bind_password_file in [ldap]"
            ) from None
        except LDAPOperationResult as exc:
            raise DirectoryError(
                f"the LDAP directory at {url} refused {doing}: {_reason(exc)}"
            ) from None
        except LDAPException as exc:
            raise DirectoryError(f"the LDAP directory at {url} failed at {doing}: {exc}") from None

    def read(self, layout: Layout, containers: Iterable[str]) -> list[Entry]:
        """The entries isidorus owns: the `containers` that exist, and every entry right
        below ou=people and ou=groups."""
        containers = list(containers)
        found = [e for dn in containers for e in self._search(dn, BASE, ["objectClass"])]
        if layout.base_dn not in containers and not self._search(
            layout.base_dn, BASE, ["objectClass"]
        ):
            raise DirectoryError(
                f"the base DN {layout.base_dn} is not in the directory at {self.config.url}: "
                "add its entry (isidorus makes only dc=, o= and ou= ones)"
            )
        found += self._search(layout.people, LEVEL, PERSON_ATTRIBUTES)
        found += self._search(layout.groups, LEVEL, GROUP_ATTRIBUTES)
        return found

    def _search(self, base: str, scope: str, attributes: list[str]) -> list[Entry]:
        with self._errors(f"a search of {base}"):
            try:
                responses = self.conn.extend.standard.paged_search(
                    base,
                    "(objectClass=*)",
                    search_scope=scope,
                    attributes=attributes,
                    paged_size=PAGE_SIZE,
                    generator=False,
                )
            except LDAPNoSuchObjectResult:
                return []
        return [_entry(r) for r in responses or () if r.get("type") == "searchResEntry"]

    def apply(self, plan: SyncPlan) -> list[str]:
        """Execute the plan; returns a line for each change the server refused. A missing
        container stops it, as nothing could be written below."""
        problems = []
        with self._errors("writing"):
            for change in plan.changes:
                try:
                    self._execute(change)
                except LDAPOperationResult as exc:
                    problem = f"cannot {change.action} {change.dn}: {_reason(exc)}"
                    if change.entry is not None and not change.entry.owned:
                        raise DirectoryError(
                            f"{problem} (is base_dn inside the suffix of slapd's database?)"
                        ) from None
                    problems.append(problem)
        return problems

    def _execute(self, change: Change) -> None:
        if change.action in ("delete", "replace"):
            # gone already: another sync got there first
            with contextlib.suppress(LDAPNoSuchObjectResult):
                self.conn.delete(change.dn)
        if change.action in ("add", "replace"):
            assert change.entry is not None
            entry = change.entry
            # there already: another sync got there first, and the next one compares it
            with contextlib.suppress(LDAPEntryAlreadyExistsResult):
                self.conn.add(
                    entry.dn,
                    list(entry.object_classes),
                    {name: list(values) for name, values in entry.attributes.items() if values},
                )
        if change.action == "modify":
            self.conn.modify(
                change.dn,
                {name: [(MODIFY_REPLACE, list(v))] for name, v in change.attributes.items()},
            )


def _entry(response: dict[str, Any]) -> Entry:
    attributes = {
        name: tuple(v.decode("utf-8", "replace") for v in values)
        for name, values in response["raw_attributes"].items()
    }
    classes = next((v for k, v in attributes.items() if k.lower() == "objectclass"), ())
    return Entry(
        response["dn"],
        classes,
        {k: v for k, v in attributes.items() if k.lower() != "objectclass"},
    )


def _reason(exc: LDAPOperationResult) -> str:
    return f"{exc.description}: {exc.message}" if exc.message else str(exc.description)
