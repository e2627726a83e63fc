"""Login throttling in the state database: per user name and per address, in a window."""

from datetime import UTC, datetime, timedelta

from isidorus.accounts import throttle


def test_five_failures_block_the_name_and_a_success_clears_it(conn):
    now = datetime.now(UTC)
    for i in range(4):
        throttle.failed(conn, "alice", f"10.0.0.{i}", now=now)
    assert not throttle.blocked(conn, "alice", "10.0.0.9", now=now)
    throttle.failed(conn, "alice", "10.0.0.5", now=now)
    assert throttle.blocked(conn, "alice", "10.0.0.9", now=now)  # from anywhere
    assert not throttle.blocked(conn, "bob", "10.0.0.9", now=now)  # others still can
    throttle.succeeded(conn, "alice")
    assert not throttle.blocked(conn, "alice", "10.0.0.9", now=now)


def test_thirty_failures_block_the_address_whatever_the_name(conn):
    now = datetime.now(UTC)
    for i in range(30):
        throttle.failed(conn, f"user{i}", "192.0.2.7", now=now)
    assert throttle.blocked(conn, "someone", "192.0.2.7", now=now)
    throttle.succeeded(conn, "someone")  # a right password elsewhere does not clear it
    assert throttle.blocked(conn, "someone", "192.0.2.7", now=now)
    assert not throttle.blocked(conn, "someone", "192.0.2.8", now=now)


def test_the_window_slides(conn):
    start = datetime.now(UTC)
    for _ in range(5):
        throttle.failed(conn, "alice", "10.0.0.1", now=start)
    assert throttle.blocked(conn, "alice", "10.0.0.2", now=start + timedelta(minutes=14))
    later = start + throttle.WINDOW + timedelta(seconds=1)
    assert not throttle.blocked(conn, "alice", "10.0.0.2", now=later)
    throttle.failed(conn, "bob", "10.0.0.3", now=later)  # old rows are dropped meanwhile
    assert not throttle.blocked(conn, "alice", "10.0.0.2", now=later)
