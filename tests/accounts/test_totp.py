"""The second factor's rules: codes within one step of drift, each good once, pending
logins that expire and allow few attempts."""

import time
from datetime import UTC, datetime, timedelta

import pyotp
import pytest

from isidorus.accounts import totp, users
from isidorus.accounts.errors import InvalidInput, LoginFailed

SECRET = pyotp.random_base32()


@pytest.fixture
def alice(conn):
    user = users.create_user(conn, "alice", "alice@example.org", "a long passphrase of hers")
    now = time.time()
    totp.turn_on(conn, "alice", SECRET, pyotp.TOTP(SECRET).at(now), now=now)
    return users.get_user(conn, "alice"), user


def test_turn_on_needs_a_code_of_the_secret(conn):
    users.create_user(conn, "bob", "bob@example.org", "his own long passphrase")
    with pytest.raises(InvalidInput, match="does not match"):
        totp.turn_on(conn, "bob", SECRET, "000000" if pyotp.TOTP(SECRET).now() != "000000" else "1")
    with pytest.raises(InvalidInput, match="base32"):
        totp.turn_on(conn, "bob", "not base32 at all!", "123456")
    assert not users.get_user(conn, "bob").has_totp


def test_codes_within_one_step_of_drift_each_good_once(conn, alice):
    user, _ = alice
    assert user.has_totp
    t = pyotp.TOTP(SECRET)
    now = time.time() + 120  # steps after the one used to turn it on
    assert not totp.check_code(conn, user.id, t.at(now - 90), now=now)  # too old
    assert not totp.check_code(conn, user.id, t.at(now + 90), now=now)  # too far ahead
    assert not totp.check_code(conn, user.id, "12345", now=now)
    assert totp.check_code(conn, user.id, t.at(now - 30), now=now)  # a slow phone
    assert not totp.check_code(conn, user.id, t.at(now - 30), now=now)  # replayed
    assert totp.check_code(conn, user.id, t.at(now)[:3] + " " + t.at(now)[3:], now=now)
    # once a step is used, an older step's code is refused too
    assert not totp.check_code(conn, user.id, t.at(now - 30), now=now)


def test_a_pending_login_takes_the_right_code_once(conn, alice):
    user, _ = alice
    now = datetime.now(UTC) + timedelta(minutes=2)
    token = totp.start_pending(conn, user, now=now)
    code = pyotp.TOTP(SECRET).at(now)
    assert totp.finish_pending(conn, token, "alice", code, now=now).name == "alice"
    again = totp.finish_pending(conn, token, "alice", code, now=now)
    assert isinstance(again, LoginFailed) and "expired" in str(again)
    # a pending login is good for its own user only; another name ends it
    token = totp.start_pending(conn, user, now=now)
    code = pyotp.TOTP(SECRET).at(now + timedelta(seconds=30))
    assert isinstance(totp.finish_pending(conn, token, "bob", code, now=now), LoginFailed)
    assert isinstance(totp.finish_pending(conn, token, "alice", code, now=now), LoginFailed)


def test_a_pending_login_allows_few_attempts_and_expires(conn, alice):
    user, _ = alice
    now = datetime.now(UTC) + timedelta(minutes=2)
    token = totp.start_pending(conn, user, now=now)
    results = [totp.finish_pending(conn, token, "alice", "000000", now=now) for _ in range(5)]
    assert [str(r).split(":")[0] for r in results] == ["wrong code"] * 4 + ["too many wrong codes"]
    code = pyotp.TOTP(SECRET).at(now)
    assert isinstance(totp.finish_pending(conn, token, "alice", code, now=now), LoginFailed)
    token = totp.start_pending(conn, user, now=now)
    later = now + totp.PENDING_LIFETIME + timedelta(seconds=1)
    result = totp.finish_pending(conn, token, "alice", pyotp.TOTP(SECRET).at(later), now=later)
    assert isinstance(result, LoginFailed) and "expired" in str(result)


def test_turn_off(conn, alice):
    totp.turn_off(conn, "alice")
    assert not users.get_user(conn, "alice").has_totp
    assert not totp.check_code(conn, alice[0].id, pyotp.TOTP(SECRET).now())


def test_the_qr_code_is_an_inline_image():
    uri = totp.setup_uri(SECRET, "alice", "Our host")
    assert uri.startswith("otpauth://totp/Our%20host:alice?secret=" + SECRET)
    assert totp.qr_svg(uri).startswith("data:image/svg+xml")
