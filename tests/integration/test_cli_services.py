"""`isidorus service catalog` through the real command line."""

import json


def test_the_catalog_command(run, tmp_path):
    r = run("service", "catalog", "--json")
    services = {s["id"]: s for s in json.loads(r.out)}
    assert services["radicale"] == {
        "id": "radicale",
        "name": "Radicale",
        "description": services["radicale"]["description"],
        "replaces": ["Google Calendar", "Google Contacts", "iCloud Calendar"],
        "version": "3.1.8",
        "sso": "header",
    }
    assert "Google Search" in run("service", "catalog").out
    own = tmp_path / "services"
    own.mkdir()
    (own / "bad.toml").write_text('id = "bad"')
    r = run("service", "catalog", env={"ISIDORUS_SERVICES_DIR": str(own)}, check=2)
    assert r.err.count("\n") == 1 and "bad.toml: name is missing" in r.err
