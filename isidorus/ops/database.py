"""Which database holds a host's state: the SQLite file in its data directory, or the
PostgreSQL database that `database` names in its `isidorus.toml`.

The password of a PostgreSQL user comes from the file that `database_password_file` names,
else from libpq's own places (`~/.pgpass`, `PGPASSFILE`, `PGPASSWORD`, or `passfile=` in the
URL), else no password is sent (peer authentication through the local socket).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from typing import Any

from isidorus.errors import UsageError
from isidorus.state.db import Database, StateError

CONFIG_NAME = "isidorus.toml"
STATE_NAME = "state.sqlite"


def read_config(data_dir: str) -> dict[str, Any]:
    path = os.path.join(data_dir, CONFIG_NAME)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise UsageError(
            f"{data_dir} holds no isidorus host: run `isidorus init --data-dir {data_dir}` first"
        ) from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None


def read_password_file(path: str) -> str:
    """The password in a file (its first line), for a database user."""
    try:
        with open(path, encoding="utf-8") as f:
            password = f.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
        raise StateError(
            f"cannot read the database password from {path}: {why} (make it a file of "
            "one line, readable by the user isidorus runs as)"
        ) from None
    if not password:
        raise StateError(f"the database password file {path} is empty: write the password in it")
    return password


def open_database(data_dir: str, config: Mapping[str, Any]) -> Database:
    """The host's state database (not migrated), as its config says. Raises StateError
    when the URL or the password file is unusable; connecting happens at the first use."""
    url = config.get("database")
    if url is None:
        return Database.open_file(os.path.join(data_dir, STATE_NAME))
    if not isinstance(url, str):
        raise UsageError(
            f"`database` in {os.path.join(data_dir, CONFIG_NAME)} must be a string, "
            'e.g. database = "postgresql://isidorus@localhost/isidorus"'
        )
    password_file = config.get("database_password_file")
    password = None
    if password_file:
        # a relative path is relative to the data directory, wherever isidorus was started
        password = read_password_file(os.path.join(data_dir, str(password_file)))
    return Database(url, password=password)
