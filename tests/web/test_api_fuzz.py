"""Schemathesis fuzzes the REST API from its own OpenAPI document, in process, with an
admin's token: no answer is a 500, and every answer (status, content type, headers, body)
is one that the document describes.

Each operation gets data that fits the document and data that does not. The operations
share one host, so what one makes (users, groups, tokens) the next may meet.

The operations that change the machine are not fuzzed: the background jobs of services
(installs, removals, upgrades, backups, restores, every service's upgrade), the nightly job,
the updates and the certificates' renewal would really install, upgrade or ask a CA (apt,
users, nginx) on the machine that runs the tests; the schedule's setting up writes a timer
or a supervisord program; a copy to a remote, or a scrub of one, works on whatever place
the fuzzing named as a remote. test_api_services.py, test_api_host.py and
test_api_backups.py test them, over a test catalog, real stores and stand-ins for the
host's programs. Their functions are also replaced here by ones that fail the test, in
case any other operation reaches them. The other jobs on the host's store are fuzzed: the
host of the fuzzing has no store, so each is refused at once (409).
"""

import pytest
import schemathesis
from fastapi.routing import APIRoute
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig

from isidorus.ops import accounts as ops
from isidorus.ops import tokens as ops_tokens
from isidorus.web.api import routers
from isidorus.web.app import create_app

# (schemathesis' own pytest loader for fixtures does not run on this pytest, so the
# operations are listed from the API's routers, and checked against the document below)
EVERY = sorted(
    (method, route.path)
    for router in routers()
    for route in router.routes
    if isinstance(route, APIRoute)
    for method in route.methods
)
# they start background jobs that change the machine: see the docstring
NOT_FUZZED = {
    ("POST", f"/v1/services/{{id}}/{action}")
    for action in ("install", "remove", "upgrade", "backup", "restore")
} | {
    ("POST", "/v1/nightly"),
    ("POST", "/v1/services/upgrade"),
    ("POST", "/v1/services/certificates/renew"),
    ("POST", "/v1/updates/apply"),
    ("PUT", "/v1/schedule"),
    ("DELETE", "/v1/schedule"),
    ("POST", "/v1/backups/remotes/{name}/sync"),
    ("POST", "/v1/backups/remotes/{name}/scrub"),
}
OPERATIONS = [op for op in EVERY if op not in NOT_FUZZED]
# what those jobs would call: reached by no fuzzed operation
CHANGES = [
    ("isidorus.ops.services", "install"),
    ("isidorus.ops.services", "remove"),
    ("isidorus.ops.services", "upgrade"),
    ("isidorus.ops.service_backups", "backup_service"),
    ("isidorus.ops.service_backups", "restore_service"),
    ("isidorus.ops.nightly", "nightly"),
    ("isidorus.ops.nightly", "run_nightly"),
    ("isidorus.ops.services", "upgrade_all"),
    ("isidorus.ops.certificates", "renew"),
    ("isidorus.ops.updates", "apply_updates"),
    ("isidorus.ops.schedule", "install"),
    ("isidorus.ops.schedule", "remove"),
    ("isidorus.ops.offsite", "sync"),
    ("isidorus.ops.offsite", "scrub"),
    ("isidorus.ops.notify", "send"),
    ("isidorus.ops.directory", "sync_directory"),
]
EXAMPLES = 15  # per operation and mode: the whole run stays well under a minute


@pytest.fixture(scope="module", autouse=True)
def machinery(tmp_path_factory):
    """No configuration file of this machine, nginx's files in a temporary directory, no
    catalog of the operator's; and the functions that change the host fail the test."""
    where = tmp_path_factory.mktemp("machinery")
    for name in ("nginx", "logs", "services", "data", "etc", "tls"):
        (where / name).mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ISIDORUS_CONFIG", str(where / "no-config.toml"))
        mp.setenv("ISIDORUS_NGINX_SITES_DIR", str(where / "nginx"))
        mp.setenv("ISIDORUS_NGINX_TEST_COMMAND", "false")
        mp.setenv("ISIDORUS_NGINX_RELOAD_COMMAND", "false")
        mp.setenv("ISIDORUS_SERVICE_LOG_DIR", str(where / "logs"))
        mp.setenv("ISIDORUS_SERVICES_DIR", str(where / "services"))
        mp.setenv("ISIDORUS_SERVICE_DATA_ROOT", str(where / "data"))
        mp.setenv("ISIDORUS_SERVICE_CONFIG_ROOT", str(where / "etc"))
        mp.setenv("ISIDORUS_TLS_DIR", str(where / "tls"))
        mp.setenv("ISIDORUS_BACKUP_STORE", str(where / "store"))
        mp.setenv("ISIDORUS_BACKUP_PASSPHRASE_FILE", str(where / "no-passphrase"))
        mp.setenv("ISIDORUS_CACHE_DIR", str(where / "cache"))
        for module, name in CHANGES:

            def refuse(*args, _name=name, **kwargs):
                pytest.fail(f"the fuzzing reached {_name}, which changes the host")

            mp.setattr(f"{module}.{name}", refuse)
        yield where


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("fuzz") / "host")
    ops.init_host(
        d, domain="localhost", admin="admin", email="admin@localhost", password="keeper's phrase!"
    )
    db = ops.open_state(d)
    ops.add_user(db, "test", "alice", "alice@example.org", "a long passphrase of hers")
    ops.add_group(db, "test", "family")
    ops.add_member(db, "test", "family", "alice")
    secret = ops_tokens.add_token(db, "test", "fuzz", "admin").secret
    db.close()
    return d, secret


@pytest.fixture(scope="module")
def schema(host):
    data_dir, secret = host
    config = SchemathesisConfig.from_dict(
        {
            # every request carries the token, except those made to go without
            "auth": {"openapi": {"HTTPBearer": {"bearer": secret}}},
            "checks": {
                # data that fits the document may still break a rule no schema can say
                # (a password that holds the user's name): 400 is the documented answer
                "positive_data_acceptance": {
                    "expected-statuses": ["2xx", "400", "401", "403", "404", "409"]
                }
            },
        }
    )
    return schemathesis.openapi.from_asgi("/api/openapi.json", create_app(data_dir), config=config)


def test_every_operation_is_fuzzed(schema):
    documented = sorted(
        (op.ok().method.upper(), op.ok().path) for op in schema.get_all_operations()
    )
    assert documented == EVERY
    assert set(EVERY) >= NOT_FUZZED


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_the_api_keeps_its_word(schema, method, path, mode):
    operation = schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,  # a user's password is hashed with Argon2id: slow on purpose
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    def check(case):
        case.call_and_validate()

    check()
