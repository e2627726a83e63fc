"""A host whose state is in PostgreSQL: `init --database`, accounts through the command
line, logins through the web, and one-line errors when the database cannot be used."""

import json
import os

import pytest
from starlette.testclient import TestClient

from isidorus.ops import accounts as ops
from isidorus.web.app import create_app
from tests.integration.conftest import assert_one_line_error
from tests.pg import PASSWORD, free_port
from tests.web.test_app import login

PW = "a long passphrase of hers"


@pytest.fixture
def pg_url(postgresql):
    with postgresql.database() as url:
        yield url


def test_a_host_on_postgresql_through_the_command_line(run, tmp_path, pg_url):
    d = tmp_path / "host"
    pwfile = tmp_path / "db-password"
    pwfile.write_text(PASSWORD + "\n")
    r = run(
        "init",
        "--data-dir",
        d,
        "--database",
        pg_url.replace(f":{PASSWORD}@", "@"),
        "--database-password-file",
        pwfile,
        "--password-stdin",
        "--json",
        input="the host keeper's passphrase\n",
    )
    assert json.loads(r.out)["created"]
    config = (d / "isidorus.toml").read_text()
    assert "database = " in config and PASSWORD not in config
    assert f'database_password_file = "{pwfile}"' in config
    assert not (d / ops.STATE_NAME).exists()  # no SQLite file beside it

    run(
        "user",
        "add",
        "alice",
        "--email",
        "a@example.org",
        "--password-stdin",
        "--data-dir",
        d,
        input=PW + "\n",
    )
    users = json.loads(run("user", "list", "--json", "--data-dir", d).out)
    assert [(u["name"], u["is_admin"]) for u in users] == [("admin", True), ("alice", False)]
    assert users[0]["created_at"].endswith("+00:00")
    assert "already initialised" in run("init", "--data-dir", d, "--database", pg_url).out


def test_the_password_file_must_be_readable(run, tmp_path, pg_url):
    r = run(
        "init",
        "--data-dir",
        tmp_path / "host",
        "--database",
        pg_url.replace(f":{PASSWORD}@", "@"),
        "--database-password-file",
        tmp_path / "missing",
        check=1,
    )
    assert_one_line_error(r, "cannot read the database password", "No such file")
    assert not (tmp_path / "host" / "isidorus.toml").exists()  # init can be run again


def test_a_host_whose_database_is_down_says_so_in_one_line(run, tmp_path):
    d = tmp_path / "host"
    d.mkdir()
    url = f"postgresql://isidorus:{PASSWORD}@127.0.0.1:{free_port()}/isidorus"
    (d / "isidorus.toml").write_text(f'domain = "localhost"\ndatabase = "{url}"\n')
    r = run("user", "list", "--data-dir", d, check=1)
    line = assert_one_line_error(r, "cannot connect to the state database", "refused")
    assert PASSWORD not in line


def test_a_bad_database_url_at_init(run, tmp_path):
    r = run("init", "--data-dir", tmp_path / "h", "--database", "mysql://u:hunter22@h/db", check=1)
    line = assert_one_line_error(r, "SQLite or PostgreSQL", "postgresql://USER@HOST/DBNAME")
    assert "hunter22" not in line


def test_logins_through_the_web_on_postgresql(tmp_path, pg_url):
    d = str(tmp_path / "host")
    r = ops.init_host(
        d, domain="localhost", admin="admin", email="admin@localhost", database=pg_url
    )
    assert r.created and r.password
    db = ops.open_state(d)
    try:
        ops.add_user(db, "test", "alice", "alice@example.org", PW)
        ops.add_group(db, "test", "family")
        ops.add_member(db, "test", "family", "alice")
    finally:
        db.close()
    assert not os.path.exists(os.path.join(d, ops.STATE_NAME))

    app = create_app(d)
    try:
        with TestClient(app, base_url="http://localhost") as client:
            assert login(client, "alice", "not her password").status_code == 401
            assert login(client).status_code == 303
            assert client.get("/portal").status_code == 200
            allowed = client.get("/auth/check", headers={"X-Isidorus-Allow": "family"})
            assert allowed.status_code == 200 and allowed.headers["x-isidorus-user"] == "alice"
            denied = client.get("/auth/check", headers={"X-Isidorus-Allow": "friends"})
            assert denied.status_code == 403
    finally:
        app.state.db.close()
