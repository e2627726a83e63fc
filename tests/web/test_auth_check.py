"""The rule of `/auth/check` (web/auth_check.py), as a table: who passes, with which groups
named by nginx, and what nginx is told."""

from __future__ import annotations

import datetime
from typing import cast

import pytest

from isidorus.accounts.sessions import Session
from isidorus.accounts.users import User
from isidorus.web.auth_check import AuthCheck, Verdict
from isidorus.web.base import SessionCache


def make_user(name: str, groups: tuple[str, ...] = (), admin: bool = False) -> User:
    return User(
        id=1, name=name, email=f"{name}@example.org", fullname="", is_admin=admin,
        disabled=False, has_totp=False, created_at=datetime.datetime(2026, 1, 1),
        groups=groups,
    )  # fmt: skip


ALICE = Verdict(200, "alice", "alice@example.org")


class FakeSessions:
    """SessionCache's `find`: a session for each known token."""

    def __init__(self) -> None:
        self.sessions = {
            "t-alice": Session(make_user("alice", ("family",)), "csrf"),
            "t-bob": Session(make_user("bob", ("friends", "chess")), "csrf"),
            "t-root": Session(make_user("root", (), admin=True), "csrf"),
        }
        self.asked: list[str] = []

    def find(self, token: str) -> Session | None:
        self.asked.append(token)
        return self.sessions.get(token)


def make_check(sessions: FakeSessions) -> AuthCheck:
    return AuthCheck(cast(SessionCache, sessions))


@pytest.mark.parametrize(
    ("cookie", "allow", "expected"),
    [
        (None, None, Verdict(401)),
        ("", "family", Verdict(401)),
        ("theme=dark", None, Verdict(401)),  # no session cookie
        ("isidorus_session=nobody", None, Verdict(401)),  # an unknown or ended session
        ("isidorus_session=t-alice", None, ALICE),
        ("isidorus_session=t-alice", "", ALICE),
        ("isidorus_session=t-alice", " , ", ALICE),
        ("isidorus_session=t-alice", "family", ALICE),
        ("isidorus_session=t-alice", "friends, family", ALICE),
        ("isidorus_session=t-alice", "friends", Verdict(403)),
        ("isidorus_session=t-alice", "Family", Verdict(403)),  # group names are exact
        ("isidorus_session=t-bob", "family,chess", Verdict(200, "bob", "bob@example.org")),
        ("isidorus_session=t-root", "family", Verdict(200, "root", "root@example.org")),
        (
            "a=1; isidorus_session=t-alice; b=2",
            "family",
            ALICE,
        ),
        ('isidorus_session="t-alice"', None, ALICE),
    ],
)
def test_the_rule(cookie, allow, expected):
    assert make_check(FakeSessions())(cookie, allow) == expected


def test_what_nginx_is_told():
    assert Verdict(200, "alice", "a@example.org").headers() == {
        "x-isidorus-user": "alice",
        "x-isidorus-email": "a@example.org",
    }
    assert Verdict(403).headers() == {} and Verdict(401).headers() == {}


def test_a_cookie_header_is_read_once_and_the_session_found_each_time():
    sessions = FakeSessions()
    check = make_check(sessions)
    for _ in range(3):
        assert check("isidorus_session=t-alice", None).status == 200
    assert sessions.asked == ["t-alice"] * 3  # a logout is the cache's to see, every time
    assert check.tokens == {"isidorus_session=t-alice": "t-alice"}
