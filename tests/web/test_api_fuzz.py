"""Schemathesis fuzzes the REST API from its own OpenAPI document, in process, with an
admin's token: no answer is a 500, and every answer (status, content type, headers, body)
is one that the document describes.

Each operation gets data that fits the document and data that does not. The operations
share one host, so what one makes (users, groups, tokens) the next may meet.
"""

import pytest
import schemathesis
from fastapi.routing import APIRoute
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig

from isidorus.ops import accounts as ops
from isidorus.ops import tokens as ops_tokens
from isidorus.web.api import router
from isidorus.web.app import create_app

# (schemathesis' own pytest loader for fixtures does not run on this pytest, so the
# operations are listed from the API's router, and checked against the document below)
OPERATIONS = sorted(
    (method, route.path)
    for route in router.routes
    if isinstance(route, APIRoute)
    for method in route.methods
)
EXAMPLES = 15  # per operation and mode: the whole run stays well under a minute


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
    assert documented == OPERATIONS


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
