"""What the directory should hold, and the plan that makes it so. Pure: no I/O.

`desired_entries()` maps the accounts to entries; `plan_sync()` compares them with the
entries found on the server and returns the changes, which `ldap.py` executes.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from ldap3.core.exceptions import LDAPInvalidDnError
from ldap3.utils.dn import escape_rdn, parse_dn

# slapd's argon2 module checks this scheme against the encoded Argon2id hash
PASSWORD_SCHEME = "{ARGON2}"
PERSON_CLASSES = ("top", "person", "organizationalPerson", "inetOrgPerson")
GROUP_CLASSES = ("top", "groupOfNames")
# attributes whose values are DNs, compared as DNs (case and spaces do not matter)
DN_VALUED = frozenset({"member"})

Values = tuple[str, ...]
Action = Literal["add", "modify", "replace", "delete"]


@dataclass(frozen=True)
class DirectoryUser:
    """A user as the directory needs them."""

    name: str
    email: str
    fullname: str
    password_hash: str  # Argon2id, encoded ($argon2id$v=19$...)
    disabled: bool


@dataclass(frozen=True)
class DirectoryGroup:
    name: str
    description: str
    members: tuple[str, ...]


@dataclass(frozen=True)
class Entry:
    """An entry: its DN, object classes and attributes. In a desired entry, an empty
    tuple means the attribute must be absent, and only the attributes named are looked
    at: others (added by an operator) are left alone. A container that is not `owned`
    (the base DN, `ou=people`, `ou=groups`) is made when missing and otherwise let be."""

    dn: str
    object_classes: Values
    attributes: Mapping[str, Values] = field(default_factory=dict)
    owned: bool = True


@dataclass(frozen=True)
class Layout:
    """Where each entry lives under the base DN."""

    base_dn: str

    @property
    def people(self) -> str:
        return f"ou=people,{self.base_dn}"

    @property
    def groups(self) -> str:
        return f"ou=groups,{self.base_dn}"

    def user_dn(self, name: str) -> str:
        return f"uid={escape_rdn(name)},{self.people}"

    def group_dn(self, name: str) -> str:
        return f"cn={escape_rdn(name)},{self.groups}"


def normalize_dn(dn: str) -> str:
    """A DN in a form to compare: types and values lowercased, no spaces around the
    separators (what slapd ignores for the names isidorus writes)."""
    try:
        parts = parse_dn(dn, strip=True)
    except LDAPInvalidDnError:
        return dn.strip().lower()
    return ",".join(f"{kind.lower()}={value.lower()}" for kind, value, _sep in parts)


def surname(fullname: str, name: str) -> str:
    """inetOrgPerson requires sn: the last word of the full name, else the login name."""
    words = fullname.split()
    return words[-1] if words else name


def user_entry(user: DirectoryUser, layout: Layout) -> Entry:
    shown = user.fullname.strip() or user.name
    return Entry(
        layout.user_dn(user.name),
        PERSON_CLASSES,
        {
            "uid": (user.name,),
            "cn": (shown,),
            "sn": (surname(user.fullname, user.name),),
            "displayName": (shown,),
            # mail is an IA5 (ASCII) string: an address with other letters is left out
            "mail": (user.email,) if user.email.isascii() else (),
            # no password, no bind: how a disabled user is kept out of every service
            "userPassword": () if user.disabled else (PASSWORD_SCHEME + user.password_hash,),
        },
    )


def group_entry(group: DirectoryGroup, enabled: Collection[str], layout: Layout) -> Entry:
    """`enabled`: the names of the users who are not disabled (only they are members)."""
    members = tuple(layout.user_dn(m) for m in group.members if m in enabled)
    return Entry(
        layout.group_dn(group.name),
        GROUP_CLASSES,
        {
            "cn": (group.name,),
            "description": (group.description,) if group.description else (),
            # groupOfNames must have a member: the base DN stands in, as nobody's entry
            "member": members or (layout.base_dn,),
        },
    )


def container_entry(dn: str) -> Entry | None:
    """An entry to hold others, by the type of its first RDN (dc, o or ou); None for
    another type, which the operator creates."""
    kind, value, _sep = parse_dn(dn, strip=True)[0]
    kind = kind.lower()
    if kind == "dc":
        classes: Values = ("top", "dcObject", "organization")
        attributes = {"dc": (value,), "o": (value,)}
    elif kind == "o":
        classes, attributes = ("top", "organization"), {"o": (value,)}
    elif kind == "ou":
        classes, attributes = ("top", "organizationalUnit"), {"ou": (value,)}
    else:
        return None
    return Entry(dn, classes, attributes, owned=False)


def desired_entries(
    users: Iterable[DirectoryUser], groups: Iterable[DirectoryGroup], layout: Layout
) -> list[Entry]:
    """Every entry isidorus writes, parents before children: the base DN (when isidorus
    can make it), `ou=people`, `ou=groups`, the users, then the groups."""
    users = list(users)
    enabled = {u.name for u in users if not u.disabled}
    containers = [container_entry(dn) for dn in (layout.base_dn, layout.people, layout.groups)]
    return [
        *(c for c in containers if c is not None),
        *(user_entry(u, layout) for u in users),
        *(group_entry(g, enabled, layout) for g in groups),
    ]


@dataclass(frozen=True)
class Change:
    """One step of a plan. add and replace write `entry` (replace deletes the entry found
    first, as it is of another kind); modify sets `attributes` (empty: remove)."""

    action: Action
    dn: str
    entry: Entry | None = None
    attributes: Mapping[str, Values] = field(default_factory=dict)

    def describe(self) -> str:
        if self.action == "modify":
            return f"modify {self.dn} ({', '.join(sorted(self.attributes))})"
        return f"{self.action} {self.dn}"


@dataclass(frozen=True)
class SyncPlan:
    changes: tuple[Change, ...]
    unchanged: int  # entries of users and groups already right

    def stats(self) -> dict[str, int]:
        counts = {"added": 0, "updated": 0, "deleted": 0, "unchanged": self.unchanged}
        for change in self.changes:
            counts[_COUNTED_AS[change.action]] += 1
        return counts


_COUNTED_AS = {"add": "added", "modify": "updated", "replace": "updated", "delete": "deleted"}


def plan_sync(desired: Sequence[Entry], found: Iterable[Entry]) -> SyncPlan:
    """The changes that turn the entries `found` (those in the parts of the tree isidorus
    owns) into the `desired` ones: deletes of the entries not desired first, then adds,
    replaces and modifies in the order of `desired` (parents before children)."""
    have = {normalize_dn(e.dn): e for e in found}
    wanted = {normalize_dn(e.dn) for e in desired}
    changes = [Change("delete", e.dn) for key, e in have.items() if key not in wanted]
    unchanged = 0
    for entry in desired:
        current = have.get(normalize_dn(entry.dn))
        if current is None:
            changes.append(Change("add", entry.dn, entry))
        elif not entry.owned:
            continue
        elif not _has_classes(current, entry.object_classes):
            changes.append(Change("replace", current.dn, entry))
        else:
            diff = attribute_changes(entry, current)
            if diff:
                changes.append(Change("modify", current.dn, attributes=diff))
            else:
                unchanged += 1
    return SyncPlan(tuple(changes), unchanged)


def attribute_changes(want: Entry, current: Entry) -> dict[str, Values]:
    """The attributes of `want` whose values differ from those of `current` (attribute
    names compared without case, as LDAP does)."""
    values = {name.lower(): v for name, v in current.attributes.items()}
    diff = {}
    for name, wanted in want.attributes.items():
        have = values.get(name.lower(), ())
        if name in DN_VALUED:
            same = {normalize_dn(v) for v in wanted} == {normalize_dn(v) for v in have}
        else:
            same = sorted(wanted) == sorted(have)
        if not same:
            diff[name] = wanted
    return diff


def _has_classes(entry: Entry, classes: Values) -> bool:
    have = {c.lower() for c in entry.object_classes}
    return all(c.lower() in have for c in classes if c != "top")
