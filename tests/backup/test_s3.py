"""The S3 backend against a real S3 server over HTTP (moto's, see tests/s3.py)."""

import itertools
import os

import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError, ResponseStreamingError
from botocore.response import StreamingBody

from isidorus.backup import locks
from isidorus.backup.errors import BackendError, StoreError
from isidorus.backup.remote import conformance
from isidorus.backup.remote.s3 import PART_SIZE, S3Backend, S3Options, parse_url
from isidorus.errors import UsageError
from isidorus.ops.stores import backend_for
from tests.pg import free_port
from tests.s3 import MIN_PART_SIZE


def _factory(server, part_size=None):
    bucket = server.bucket_name()
    counter = itertools.count()
    kw = {} if part_size is None else {"part_size": part_size}

    def factory():
        return S3Backend(f"s3://{bucket}/stores/store{next(counter)}", **kw)

    return factory


def _checks():
    for check in conformance.CHECKS:
        # thousands of requests, and moto's server opens a connection for each
        slow = [pytest.mark.slow] if check is conformance.check_concurrent_reads else []
        yield pytest.param(check, id=check.__name__, marks=slow)


@pytest.mark.parametrize("check", list(_checks()))
def test_conformance(s3_env, check):
    conformance.run_check(_factory(s3_env), check)


UPLOAD_CHECKS = [
    conformance.check_upload,
    conformance.check_upload_mutable,
    conformance.check_concurrent_uploads,
]


@pytest.mark.parametrize("check", UPLOAD_CHECKS, ids=[c.__name__ for c in UPLOAD_CHECKS])
def test_conformance_of_multipart_uploads(s3_env, check):
    """The upload checks again with parts so small that every upload is a multipart one."""
    conformance.run_check(_factory(s3_env, MIN_PART_SIZE), check)


# -- helpers


@pytest.fixture
def store(s3_env):
    b = S3Backend(f"s3://{s3_env.new_bucket()}/backups/host")
    b.create()
    yield b
    b.close()


@pytest.fixture
def client(s3_env):
    c = s3_env.client()
    yield c
    c.close()


def _keys(client, bucket, prefix=""):
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def _uploads(client, bucket):
    return sorted(u["Key"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []))


class _Raw:
    def __init__(self, body):
        self.body = body

    def stream(self, **kw):
        yield self.body


def _answer(status, code):
    """A before-send hook that answers every request with this S3 error, unsent."""

    def hook(request, **kw):
        body = f"<Error><Code>{code}</Code><Message>as the test says</Message></Error>"
        return AWSResponse(request.url, status, {}, _Raw(body.encode()))

    return hook


# -- addresses and layout


@pytest.mark.parametrize(
    ("url", "bucket", "prefix"),
    [
        ("s3://b", "b", ""),
        ("s3://b/", "b", ""),
        ("s3://my.bucket-1/a/b", "my.bucket-1", "a/b/"),
        ("s3://b//a///b/", "b", "a/b/"),
    ],
)
def test_parse_url(url, bucket, prefix):
    assert parse_url(url) == (bucket, prefix)


@pytest.mark.parametrize("url", ["s3://", "s3:///prefix", "s3://b c/x", "s3://b/a/../c", "b/c"])
def test_parse_url_refuses(url):
    with pytest.raises(UsageError):
        parse_url(url)


def test_keys_follow_the_local_layout(store, client):
    data = b"pack bytes"
    name = conformance.content_name(data)
    store.write("data", name, data)
    store.write("index", name, data)
    store.write("locks", "me", b"{}")
    store.write("config", "config", b"{}")
    assert store.location == f"s3://{store.bucket}/backups/host"
    assert _keys(client, store.bucket) == [
        "backups/host/config",
        f"backups/host/data/{name[:2]}/{name}",
        f"backups/host/index/{name}",
        "backups/host/locks/me",
    ]


def test_stores_under_neighbouring_prefixes_stay_apart(s3_env):
    bucket = s3_env.new_bucket()
    one, two = S3Backend(f"s3://{bucket}/st"), S3Backend(f"s3://{bucket}/store")
    one.create()
    two.create()
    one.write("config", "config", b"one")
    two.write("config", "config", b"two")  # not refused: another store
    one.write("locks", "a", b"1")
    assert dict(one.list("locks")) == {"a": 1}
    assert dict(two.list("locks")) == {}
    assert two.read("config", "config") == b"two"


def test_list_skips_what_is_not_an_object_of_the_kind(store, client):
    data = b"kept"
    name = conformance.content_name(data)
    store.write("data", name, data)
    for stray in (f"data/{name}", f"data/00/{name}/x", "data/ab/.hidden", "index/a/b"):
        client.put_object(Bucket=store.bucket, Key=f"backups/host/{stray}", Body=b"x")
    assert dict(store.list("data")) == {name: 4}
    assert dict(store.list("index")) == {}


# -- create


def test_create_makes_the_bucket(s3_env, client):
    bucket = s3_env.bucket_name()
    S3Backend(f"s3://{bucket}/x").create()
    assert bucket in [b["Name"] for b in client.list_buckets()["Buckets"]]


def test_create_refuses_a_prefix_with_other_objects(s3_env, client):
    bucket = s3_env.new_bucket()
    client.put_object(Bucket=bucket, Key="photos/cat.jpg", Body=b"\xff\xd8")
    with pytest.raises(StoreError, match="not empty"):
        S3Backend(f"s3://{bucket}/photos").create()
    with pytest.raises(StoreError, match="not empty"):
        S3Backend(f"s3://{bucket}").create()
    S3Backend(f"s3://{bucket}/backups").create()  # another prefix is fine
    assert _keys(client, bucket) == ["photos/cat.jpg"]


# -- conditional writes


def _sent(backend, operation):
    """The headers of every request of an operation that the backend sends."""
    seen = []
    backend.client.meta.events.register(
        f"before-send.s3.{operation}", lambda request, **kw: seen.append(dict(request.headers))
    )
    return seen


def test_immutable_writes_are_conditional(store):
    puts = _sent(store, "PutObject")
    data = b"index bytes"
    name = conformance.content_name(data)
    store.write("index", name, data)
    store.write("index", name, b"other bytes")  # refused by the server, not by a HEAD
    store.write("locks", "me", b"1")
    assert [h.get("If-None-Match") for h in puts] == [b"*", b"*", None]
    assert store.read("index", name) == data
    with pytest.raises(FileExistsError):
        store.write("locks", "me", b"2", exclusive=True)
    assert store.read("locks", "me") == b"1"


def test_a_server_without_conditional_writes(store):
    """A server that answers If-None-Match with 501 gets a HEAD before each PUT instead."""
    puts = _sent(store, "PutObject")

    def refuse(request, **kw):
        if request.headers.get("If-None-Match"):
            return _answer(501, "NotImplemented")(request)
        return None

    store.client.meta.events.register("before-send.s3.PutObject", refuse)
    heads = _sent(store, "HeadObject")
    data = b"snapshot"
    name = conformance.content_name(data)
    store.write("snapshots", name, data)
    store.write("snapshots", name, b"other")
    assert store.read("snapshots", name) == data
    assert [h.get("If-None-Match") for h in puts] == [b"*", None]  # asked once, then not
    assert len(heads) == 2  # one before each write (the second found the object)


def test_a_server_ignoring_conditional_writes_still_refuses_a_taken_lock(store):
    def ignore(request, **kw):
        del request.headers["If-None-Match"]

    store.client.meta.events.register("before-send.s3.PutObject", ignore)
    store.write("locks", "exclusive", b"first", exclusive=True)
    with pytest.raises(FileExistsError):
        store.write("locks", "exclusive", b"second", exclusive=True)
    assert store.read("locks", "exclusive") == b"first"


def test_puts_carry_content_md5(store):
    puts = _sent(store, "PutObject")
    store.write("locks", "me", b"hello")
    assert puts[0]["Content-MD5"] == b"XUFAKrxLKna5cZ2REBfFkg=="  # md5("hello"), base64


# -- multipart uploads


def test_upload_streams_a_pack_in_parts(s3_env, client):
    part = 5 * 1024 * 1024  # the least S3 takes
    store = S3Backend(f"s3://{s3_env.new_bucket()}/p", part_size=part)
    store.create()
    store.tmp_tag = "a" * 32
    sizes = []
    real = store._upload_part

    def spy(key, upload_id, number, data):
        sizes.append(len(data))
        return real(key, upload_id, number, data)

    store._upload_part = spy
    pack = os.urandom(2 * part + 12345)
    up = store.upload()
    for i in range(0, len(pack), 100_000):
        up.write(pack[i : i + 100_000])
        assert len(up.buf) < part  # never more than a part waits here
        assert len(up.pending) <= 2  # and at most two are on their way
    assert _uploads(client, store.bucket) == [up.key]
    assert up.key.startswith(f"p/tmp/{'a' * 32}-")
    assert _keys(client, store.bucket, "p/data/") == []
    name = conformance.content_name(pack)
    up.commit("data", name)
    assert sizes == [part, part, 12345]
    assert store.read("data", name) == pack
    assert store.read_range("data", name, part - 10, 20) == pack[part - 10 : part + 10]
    assert _uploads(client, store.bucket) == []
    assert _keys(client, store.bucket, "p/tmp/") == []
    store.close()


def test_abort_leaves_no_object_and_no_upload(s3_env, client):
    store = S3Backend(f"s3://{s3_env.new_bucket()}/p", part_size=MIN_PART_SIZE)
    store.create()
    up = store.upload()
    up.write(os.urandom(3 * MIN_PART_SIZE + 5))
    assert len(_uploads(client, store.bucket)) == 1
    up.abort()
    assert _uploads(client, store.bucket) == []
    assert _keys(client, store.bucket) == []


def test_a_failed_part_aborts_the_upload(s3_env, client):
    store = S3Backend(f"s3://{s3_env.new_bucket()}/p", part_size=MIN_PART_SIZE)
    store.create()
    store.client.meta.events.register("before-send.s3.UploadPart", _answer(400, "BadDigest"))
    up = store.upload()
    with pytest.raises(BackendError, match="BadDigest"):
        for _ in range(10):
            up.write(os.urandom(MIN_PART_SIZE))
        up.commit("data", "ab" * 32)
    assert _uploads(client, store.bucket) == []
    assert _keys(client, store.bucket) == []


def test_a_failed_commit_leaves_nothing(s3_env, client):
    store = S3Backend(f"s3://{s3_env.new_bucket()}/p", part_size=MIN_PART_SIZE)
    store.create()
    store.client.meta.events.register("before-send.s3.CopyObject", _answer(403, "AccessDenied"))
    up = store.upload()
    up.write(os.urandom(2 * MIN_PART_SIZE + 1))
    with pytest.raises(BackendError, match="denied"):
        up.commit("data", "cd" * 32)
    assert _uploads(client, store.bucket) == []
    assert _keys(client, store.bucket) == []


def test_a_small_upload_is_one_put(store, client):
    puts = _sent(store, "PutObject")
    up = store.upload()
    up.write(b"small pack")
    up.commit("data", conformance.content_name(b"small pack"))
    assert len(puts) == 1
    assert _uploads(client, store.bucket) == []
    assert PART_SIZE >= 5 * 1024 * 1024  # S3's least part size


def test_clean_tmp_removes_the_uploads_of_dead_sessions(s3_env, client):
    bucket = s3_env.new_bucket()
    store = S3Backend(f"s3://{bucket}/p", part_size=MIN_PART_SIZE)
    store.create()
    store.tmp_tag = "dead"
    dead = store.upload()
    dead.write(os.urandom(MIN_PART_SIZE + 1))
    store.tmp_tag = "alive"
    alive = store.upload()
    alive.write(os.urandom(MIN_PART_SIZE + 1))
    client.put_object(Bucket=bucket, Key="p/tmp/dead-1234.tmp", Body=b"finished, not copied")
    client.put_object(Bucket=bucket, Key="p/tmp/alive-5678.tmp", Body=b"finished, not copied")
    assert len(_uploads(client, bucket)) == 2
    store.clean_tmp({"alive"})
    assert _uploads(client, bucket) == [alive.key]
    assert _keys(client, bucket, "p/tmp/") == ["p/tmp/alive-5678.tmp"]
    alive.write(b"the rest")
    alive.commit("data", "ef" * 32)  # a live session's upload goes on
    assert store.exists("data", "ef" * 32)


# -- errors


def _one_line(exc):
    text = str(exc)
    assert "\n" not in text and text
    return text


def test_missing_bucket(s3_env):
    b = S3Backend("s3://no-such-bucket/x")
    with pytest.raises(BackendError) as info:
        b.read("config", "config")
    assert info.value.permanent
    assert "no-such-bucket does not exist" in _one_line(info.value)
    assert "isidorus backup init" in str(info.value)


def test_missing_object(store):
    with pytest.raises(FileNotFoundError):
        store.read("snapshots", "ab" * 32)
    assert not store.exists("snapshots", "ab" * 32)
    store.remove("snapshots", "ab" * 32)  # idempotent


def test_endpoint_down(s3_env, monkeypatch):
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    url = f"http://127.0.0.1:{free_port()}"
    b = S3Backend("s3://bucket/x", S3Options(endpoint=url))
    with pytest.raises(BackendError) as info:
        b.read("config", "config")
    assert not info.value.permanent
    assert f"cannot reach the S3 endpoint {url}" in _one_line(info.value)


def test_refused_credentials(s3_env, s3_server_refusing):
    b = S3Backend("s3://bucket/x", S3Options(endpoint=s3_server_refusing.url))
    with pytest.raises(BackendError) as info:
        b.read("config", "config")
    assert info.value.permanent
    assert "refused the S3 credentials (InvalidAccessKeyId)" in _one_line(info.value)
    with pytest.raises(BackendError) as info:
        b.exists("config", "config")  # a HEAD: a bare 403, no code
    assert info.value.permanent
    assert "denied" in _one_line(info.value) and "credentials" in str(info.value)


def test_no_credentials(s3_env, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    b = S3Backend("s3://bucket/x")
    with pytest.raises(BackendError) as info:
        b.read("config", "config")
    assert info.value.permanent
    assert "no S3 credentials found" in _one_line(info.value)


def test_credentials_file(s3_env, monkeypatch, tmp_path):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    env = s3_env.env()
    creds = tmp_path / "s3.credentials"
    creds.write_text(
        "[default]\n"
        f"aws_access_key_id = {env['AWS_ACCESS_KEY_ID']}\n"
        f"aws_secret_access_key = {env['AWS_SECRET_ACCESS_KEY']}\n"
    )
    b = S3Backend(f"s3://{s3_env.new_bucket()}/x", S3Options(credentials_file=str(creds)))
    b.create()
    assert b.client._request_signer._credentials.access_key == env["AWS_ACCESS_KEY_ID"]
    with pytest.raises(UsageError, match="s3_credentials_file .*missing: No such file"):
        S3Backend("s3://b/x", S3Options(credentials_file=str(tmp_path / "missing")))


def test_endpoint_from_aws_endpoint_url_s3_and_from_settings(s3_env, monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_env.url)
    assert S3Backend("s3://b/x").endpoint == s3_env.url
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:1")
    assert S3Backend("s3://b/x", S3Options(endpoint=s3_env.url)).endpoint == s3_env.url


def test_addressing_style(s3_env):
    bucket = s3_env.new_bucket()
    b = S3Backend(f"s3://{bucket}/x", S3Options(addressing_style="path"))
    urls = []
    b.client.meta.events.register(
        "before-send.s3.HeadObject", lambda request, **kw: urls.append(request.url)
    )
    assert not b.exists("config", "config")
    assert urls == [f"{s3_env.url}/{bucket}/x/config"]
    with pytest.raises(UsageError, match="s3_addressing_style 'dns' is not one of auto, path"):
        S3Backend("s3://b/x", S3Options(addressing_style="dns"))


@pytest.mark.parametrize(
    ("status", "code", "words", "permanent"),
    [
        (503, "SlowDown", "try again later", False),
        (500, "InternalError", "try again later", False),
        (409, "ConditionalRequestConflict", "try again later", False),
        (403, "AccessDenied", "was denied", True),
        (403, "SignatureDoesNotMatch", "refused the S3 credentials", True),
        (404, "NoSuchBucket", "does not exist", True),
        (507, "XMinioStorageFull", "is full", True),
        (403, "RequestTimeTooSkewed", "clock", True),
        (400, "InvalidArgument", "InvalidArgument", True),
    ],
)
def test_error_mapping(store, status, code, words, permanent):
    err = ClientError(
        {
            "Error": {"Code": code, "Message": "what\nthe server said"},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        "PutObject",
    )
    mapped = store._error(err, "index/abc")
    assert words in _one_line(mapped)
    assert mapped.permanent is permanent


def test_transient_errors_are_retried(store):
    """Throttling and 5xx are tried again with backoff before they become errors."""
    calls = []

    def throttle(request, **kw):
        calls.append(1)
        if len(calls) < 3:
            return _answer(503, "SlowDown")(request)
        return None

    store.client.meta.events.register("before-send.s3.PutObject", throttle)
    store.write("locks", "me", b"1")
    assert len(calls) == 3
    assert store.read("locks", "me") == b"1"


def test_backend_for_s3_takes_the_settings(s3_env):
    b = backend_for(
        "s3://bucket/p",
        {"s3_endpoint": "http://127.0.0.1:9", "s3_region": "garage", "s3_addressing_style": "path"},
    )
    assert isinstance(b, S3Backend)
    assert b.endpoint == "http://127.0.0.1:9"
    assert b.client.meta.region_name == "garage"
    assert b.client.meta.config.s3 == {"addressing_style": "path"}


def test_a_broken_download_is_read_again(store, monkeypatch):
    """botocore retries a request, not the reading of its body: the backend does that."""
    store.write("locks", "me", b"the lock")
    real, calls = StreamingBody.read, []

    def flaky(self, *a, **kw):
        calls.append(1)
        if len(calls) == 1:
            raise ResponseStreamingError(error="connection reset by peer")
        return real(self, *a, **kw)

    monkeypatch.setattr(StreamingBody, "read", flaky)
    assert store.read("locks", "me") == b"the lock"
    assert len(calls) == 2

    def broken(self, *a, **kw):
        raise ResponseStreamingError(error="connection reset by peer")

    monkeypatch.setattr(StreamingBody, "read", broken)
    with pytest.raises(BackendError, match="connection .* broke") as info:
        store.read_range("locks", "me", 0, 3)
    assert not info.value.permanent


def test_read_only_credentials_still_read(store):
    """Commands that only read go on where the session cannot be registered."""
    store.write("config", "config", b"{}")
    store.client.meta.events.register("before-send.s3.PutObject", _answer(403, "AccessDenied"))
    with locks.session(store, "list", read_only=True):
        assert store.read("config", "config") == b"{}"
    with pytest.raises(BackendError, match="denied"), locks.session(store, "backup"):
        pass


def test_an_unknown_profile_is_a_usage_error(s3_env, monkeypatch):
    monkeypatch.setenv("AWS_PROFILE", "nope")
    with pytest.raises(UsageError, match="nope.*fix AWS_PROFILE"):
        S3Backend("s3://b/x")
