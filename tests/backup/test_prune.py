import time
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from isidorus.backup.prune import KeepPolicy, apply_policy, plan_prune
from isidorus.backup.testing import make_snapshot
from isidorus.errors import UsageError

pytestmark = pytest.mark.usefixtures("utc")


def _snaps(*times, **kw):
    return [make_snapshot(t, sid=t, **kw) for t in times]


def _kept(decisions):
    """{snapshot id: reason} of what is kept."""
    return {d.snapshot.id: d.reason for d in decisions if d.keep}


# Each case: snapshot times (UTC; ids are the times), the policy, and what it keeps with
# the reason. Reasons name the period, so they say which rule kept what.
CASES = [
    pytest.param(
        [
            "2026-01-01T01:00",
            "2026-01-01T02:00",
            "2026-01-01T03:00",
            "2026-01-01T04:00",
            "2026-01-01T05:00",
        ],
        KeepPolicy(last=3),
        {"2026-01-01T05:00": "last", "2026-01-01T04:00": "last", "2026-01-01T03:00": "last"},
        id="last",
    ),
    pytest.param(
        ["2026-01-01T01:00", "2026-01-02T01:00"],
        KeepPolicy(last=10),
        {"2026-01-01T01:00": "last", "2026-01-02T01:00": "last"},
        id="last-more-than-there-are",
    ),
    pytest.param(
        [
            "2026-03-10T10:05",
            "2026-03-10T10:40",
            "2026-03-10T11:10",
            "2026-03-10T11:50",
            "2026-03-10T12:30",
        ],
        KeepPolicy(hourly=2),
        {"2026-03-10T12:30": "hourly 2026-03-10 12", "2026-03-10T11:50": "hourly 2026-03-10 11"},
        id="hourly-keeps-the-newest-of-each-hour",
    ),
    pytest.param(
        [
            "2026-01-01T08:00",
            "2026-01-01T20:00",
            "2026-01-03T12:00",
            "2026-01-07T06:00",
            "2026-01-07T18:00",
            "2026-01-08T00:30",
        ],
        KeepPolicy(daily=3),
        {
            "2026-01-08T00:30": "daily 2026-01-08",
            "2026-01-07T18:00": "daily 2026-01-07",
            "2026-01-03T12:00": "daily 2026-01-03",
        },
        id="daily-days-without-snapshots-do-not-count",
    ),
    pytest.param(
        # 2025-12-29 (a Monday) to 2026-01-04 is ISO week 2026-W01; 2025-12-28 is in 2025-W52
        ["2025-12-27T12:00", "2025-12-28T12:00", "2025-12-29T12:00", "2026-01-04T12:00"],
        KeepPolicy(weekly=2),
        {"2026-01-04T12:00": "weekly 2026-W01", "2025-12-28T12:00": "weekly 2025-W52"},
        id="weekly-iso-weeks-across-the-new-year",
    ),
    pytest.param(
        # 2027-01-01 is a Friday: ISO week 2026-W53
        ["2026-12-28T09:00", "2027-01-01T09:00", "2027-01-03T09:00", "2027-01-04T09:00"],
        KeepPolicy(weekly=3),
        {"2027-01-04T09:00": "weekly 2027-W01", "2027-01-03T09:00": "weekly 2026-W53"},
        id="weekly-iso-week-53",
    ),
    pytest.param(
        ["2026-01-31T23:00", "2026-02-01T00:00", "2026-02-27T10:00", "2026-04-15T10:00"],
        KeepPolicy(monthly=3),
        {
            "2026-04-15T10:00": "monthly 2026-04",
            "2026-02-27T10:00": "monthly 2026-02",
            "2026-01-31T23:00": "monthly 2026-01",
        },
        id="monthly",
    ),
    pytest.param(
        [
            "2023-06-01T00:00",
            "2024-12-31T23:59",
            "2025-01-01T00:00",
            "2025-07-01T00:00",
            "2026-03-01T00:00",
        ],
        KeepPolicy(yearly=3),
        {
            "2026-03-01T00:00": "yearly 2026",
            "2025-07-01T00:00": "yearly 2025",
            "2024-12-31T23:59": "yearly 2024",
        },
        id="yearly",
    ),
    pytest.param(
        # last keeps Jan 3 20:00; Jan 3 is then covered, so daily 2 keeps two more days
        [
            "2026-01-01T12:00",
            "2026-01-02T09:00",
            "2026-01-02T20:00",
            "2026-01-03T10:00",
            "2026-01-03T20:00",
        ],
        KeepPolicy(last=1, daily=2),
        {
            "2026-01-03T20:00": "last",
            "2026-01-02T20:00": "daily 2026-01-02",
            "2026-01-01T12:00": "daily 2026-01-01",
        },
        id="last-then-daily-covered-day-does-not-count",
    ),
    pytest.param(
        [
            "2025-12-24T12:00",
            "2026-01-01T12:00",
            "2026-01-02T12:00",
            "2026-01-08T12:00",
            "2026-01-09T12:00",
        ],
        KeepPolicy(daily=2, weekly=2),
        {
            "2026-01-09T12:00": "daily 2026-01-09",
            "2026-01-08T12:00": "daily 2026-01-08",
            "2026-01-02T12:00": "weekly 2026-W01",
            "2025-12-24T12:00": "weekly 2025-W52",
        },
        id="daily-then-weekly-covered-week-does-not-count",
    ),
    pytest.param(
        # hourly marks Jan 2 10:10 removed (its hour is taken); daily does not revive it
        ["2026-01-01T12:00", "2026-01-02T10:10", "2026-01-02T10:30"],
        KeepPolicy(hourly=1, daily=2),
        {"2026-01-02T10:30": "hourly 2026-01-02 10", "2026-01-01T12:00": "daily 2026-01-01"},
        id="a-snapshot-passed-over-by-a-rule-stays-removed",
    ),
    pytest.param(
        [
            "2025-11-30T12:00",
            "2025-12-15T12:00",
            "2026-01-10T12:00",
            "2026-01-20T12:00",
            "2026-02-01T12:00",
            "2026-02-02T12:00",
        ],
        KeepPolicy(daily=1, monthly=2, yearly=5),
        {
            "2026-02-02T12:00": "daily 2026-02-02",
            "2026-01-20T12:00": "monthly 2026-01",
            "2025-12-15T12:00": "monthly 2025-12",
        },
        id="daily-monthly-yearly-covered-years-do-not-count",
    ),
    pytest.param([], KeepPolicy(last=1, daily=7), {}, id="nothing-to-decide"),
]


@pytest.mark.parametrize(("times", "policy", "kept"), CASES)
def test_apply_policy(times, policy, kept):
    snaps = _snaps(*times)
    decisions = apply_policy(snaps, policy)
    assert _kept(decisions) == kept
    assert [d.snapshot.id for d in decisions] == sorted(times, reverse=True)
    assert all(d.reason == "" for d in decisions if not d.keep)


def test_apply_policy_same_time_orders_by_id():
    a = make_snapshot("2026-05-05T05:05", sid="aaaa")
    b = make_snapshot("2026-05-05T05:05", sid="bbbb")
    decisions = apply_policy([a, b], KeepPolicy(last=1))
    assert [(d.snapshot.id, d.keep) for d in decisions] == [("bbbb", True), ("aaaa", False)]


def test_periods_are_local_time(utc):
    # 10:00 and 15:00 UTC are one day in UTC but two in UTC+10 (20:00, 01:00 next day)
    snaps = _snaps("2026-06-01T10:00", "2026-06-01T15:00")
    assert _kept(apply_policy(snaps, KeepPolicy(daily=5))) == {
        "2026-06-01T15:00": "daily 2026-06-01"
    }
    utc.setenv("TZ", "XST-10")  # POSIX: ten hours ahead of UTC
    time.tzset()
    assert _kept(apply_policy(snaps, KeepPolicy(daily=5))) == {
        "2026-06-01T15:00": "daily 2026-06-02",
        "2026-06-01T10:00": "daily 2026-06-01",
    }


def test_snapshot_times_with_an_offset_are_compared_as_instants():
    # 23:30 at UTC-2 is 01:30 UTC on the next day
    snaps = [
        make_snapshot("2026-06-01T23:30-02:00", sid="late"),
        make_snapshot("2026-06-02T00:30", sid="early"),
    ]
    assert _kept(apply_policy(snaps, KeepPolicy(daily=1))) == {"late": "daily 2026-06-02"}


def test_empty_policy_is_refused():
    assert KeepPolicy().is_empty()
    assert not KeepPolicy(yearly=1).is_empty()
    with pytest.raises(UsageError, match="keep"):
        plan_prune(_snaps("2026-01-01T00:00"), KeepPolicy())


def test_plan_groups_by_host_kind_and_paths():
    snaps = (
        _snaps("2026-01-01T01:00", "2026-01-02T01:00", hostname="a")
        + _snaps("2026-01-01T02:00", "2026-01-02T02:00", hostname="b")
        + [
            make_snapshot(t, hostname="a", kind="image", paths=("/dev/vda",))
            for t in ("2026-01-01T03:00", "2026-01-02T03:00")
        ]
        + [
            make_snapshot(t, hostname="a", paths=("/srv", "/etc"))
            for t in ("2026-01-01T04:00", "2026-01-02T04:00")
        ]
    )
    plan = plan_prune(snaps, KeepPolicy(last=1))
    keys = [g for g, _ in plan.groups]
    assert keys == sorted(keys)
    assert set(keys) == {
        ("a", "files", ("/srv",)),
        ("b", "files", ("/srv",)),
        ("a", "image", ("/dev/vda",)),
        ("a", "files", ("/srv", "/etc")),
    }
    for _key, decisions in plan.groups:
        assert [d.keep for d in decisions] == [True, False]
        assert decisions[0].snapshot.time.day == 2
    assert plan.stats() == {"keep": 4, "remove": 4}
    assert {s.time.day for s in plan.to_remove} == {1}
    assert len(plan.to_keep) == 4


def test_plan_considers_only_snapshots_with_every_tag():
    snaps = [
        make_snapshot("2026-01-01T00:00", sid="nightly-1", tags=("nightly", "db")),
        make_snapshot("2026-01-02T00:00", sid="nightly-2", tags=("nightly",)),
        make_snapshot("2026-01-03T00:00", sid="nightly-3", tags=("db", "nightly")),
        make_snapshot("2026-01-04T00:00", sid="manual", tags=()),
        make_snapshot("2026-01-05T00:00", sid="db-only", tags=("db",)),
    ]
    plan = plan_prune(snaps, KeepPolicy(last=1), tags=("nightly", "db"))
    assert [s.id for s in plan.to_keep] == ["nightly-3"]
    assert [s.id for s in plan.to_remove] == ["nightly-1"]
    plan = plan_prune(snaps, KeepPolicy(last=1), tags=("nightly",))
    assert [s.id for s in plan.to_keep] == ["nightly-3"]
    assert sorted(s.id for s in plan.to_remove) == ["nightly-1", "nightly-2"]
    plan = plan_prune(snaps, KeepPolicy(last=1))
    assert [s.id for s in plan.to_keep] == ["db-only"]


def test_plan_to_json():
    snaps = _snaps("2026-01-01T00:00", "2026-01-02T00:00")
    doc = plan_prune(snaps, KeepPolicy(daily=1)).to_json()
    assert doc["policy"] == {"daily": 1}
    assert (doc["keep"], doc["remove"], doc["removed"]) == (1, 1, 0)
    [group] = doc["groups"]
    assert (group["hostname"], group["kind"], group["paths"]) == ("host", "files", ["/srv"])
    assert group["snapshots"] == [
        {
            "id": "2026-01-02T00:00",
            "time": "2026-01-02T00:00:00.000000Z",
            "keep": True,
            "reason": "daily 2026-01-02",
        },
        {
            "id": "2026-01-01T00:00",
            "time": "2026-01-01T00:00:00.000000Z",
            "keep": False,
            "reason": "",
        },
    ]


def test_plan_execute_removes_snapshot_objects_and_can_run_again(repo):
    ids = []
    for day in (1, 2, 3):
        snap = make_snapshot(f"2026-01-0{day}T00:00")
        ids.append(repo.save_snapshot(snap))
    snaps = repo.list_snapshots()
    assert [s.id for s in snaps] == ids
    plan = plan_prune(snaps, KeepPolicy(last=1))
    plan.execute(repo)
    assert plan.removed == 2
    assert repo.snapshot_names() == [ids[2]]
    # an interrupted prune is run again: removing what is gone is not an error
    plan_prune(snaps, KeepPolicy(last=1)).execute(repo)
    assert repo.snapshot_names() == [ids[2]]


# -- properties that hold for any snapshots and policy

_times = st.lists(
    st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2027, 1, 1)),
    max_size=40,
    unique=True,
).map(lambda ts: [t.replace(tzinfo=UTC) for t in ts])
_policies = st.builds(KeepPolicy, *(st.integers(0, 4) for _ in range(6))).filter(
    lambda p: not p.is_empty()
)


@settings(max_examples=200, deadline=None)
@given(_times, _policies)
def test_policy_properties(times, policy):
    snaps = [make_snapshot(t) for t in times]
    decisions = apply_policy(snaps, policy)
    assert sorted(d.snapshot.id for d in decisions) == sorted(s.id for s in snaps)
    kept = [d for d in decisions if d.keep]
    # the newest snapshot is always kept by the first rule in effect
    if snaps:
        assert decisions[0].keep
    # each rule keeps at most its count, and one snapshot per period
    for rule in ("last", "hourly", "daily", "weekly", "monthly", "yearly"):
        reasons = [d.reason for d in kept if d.reason.split(" ")[0] == rule]
        assert len(reasons) <= getattr(policy, rule)
        if rule != "last":
            assert len(set(reasons)) == len(reasons)
    assert len(kept) <= sum(
        getattr(policy, r) for r in ("last", "hourly", "daily", "weekly", "monthly", "yearly")
    )
    # keep-last alone keeps exactly the newest N
    if policy == KeepPolicy(last=policy.last):
        assert [d.keep for d in decisions] == [i < policy.last for i in range(len(snaps))]
