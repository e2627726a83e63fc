"""What every visitor's page reads from the state is kept while the state is unchanged,
and read again after any commit, this process's or another's."""

from __future__ import annotations

from isidorus.ops import runs
from isidorus.state.db import Database, sqlite_url
from isidorus.state.migrations import migrate
from isidorus.web.base import StateMemo


def test_a_value_is_kept_until_a_commit_by_anyone(tmp_path):
    url = sqlite_url(str(tmp_path / "state.sqlite"))
    mine, other = Database(url), Database(url)  # `other` stands for another process
    try:
        migrate(mine)
        memo = StateMemo(mine)
        calls = []

        def count() -> int:
            calls.append(1)
            return len(runs.list_runs(mine))

        assert memo.get("runs", count) == 0
        assert memo.get("runs", count) == 0 and len(calls) == 1  # kept
        runs.begin(other, "nightly")  # a commit by another connection
        assert memo.get("runs", count) == 1 and len(calls) == 2
        runs.begin(mine, "update")  # and by this one
        assert memo.get("runs", count) == 2 and len(calls) == 3
        assert memo.get("runs", count) == 2 and len(calls) == 3
    finally:
        mine.close()
        other.close()
