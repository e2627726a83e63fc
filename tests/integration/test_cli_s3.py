"""`isidorus backup …` on an s3:// store, through the console script, against an S3 server
spoken to over HTTP (moto's, see tests/s3.py), configured as a user would: AWS_* variables,
or isidorus's s3_* settings."""

from __future__ import annotations

import json
import random

import pytest

from tests.pg import free_port

from .conftest import (
    KDF,
    assert_intact,
    assert_one_line_error,
    assert_restores,
    create,
    manifest,
    snapshots,
    write_random,
)


@pytest.fixture
def s3(run, s3_server, tmp_path):
    """The runner's environment points at the S3 server; no AWS files of this machine."""
    for name in [k for k in run.env if k.startswith("AWS_")]:
        del run.env[name]
    run.env.update(
        s3_server.env(),
        AWS_CONFIG_FILE=str(tmp_path / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-aws-credentials"),
        AWS_EC2_METADATA_DISABLED="true",
    )
    return s3_server


def _objects(client, bucket, prefix):
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"][len(prefix) :] for page in pages for o in page.get("Contents", []))


@pytest.mark.slow
def test_a_store_on_s3_from_init_to_gc(run, s3, sample_tree, tmp_path):
    bucket = s3.bucket_name()  # init makes the bucket
    store = f"s3://{bucket}/backups/host"
    r = run("backup", "init", store, *KDF)
    assert r.out.strip() == f"created an encrypted store at {store}"

    # a file bigger than an upload part, so that its pack is a multipart upload
    write_random(sample_tree / "data" / "big.bin", 9 * 1024 * 1024, random.Random(3))
    first_tree = manifest(sample_tree)
    first = create(run, store, sample_tree, "--time", "2026-03-01T12:00:00Z")
    (sample_tree / "hello.txt").write_text("changed\n")
    (sample_tree / "data" / "big.bin").unlink()
    second_tree = manifest(sample_tree)
    second = create(run, store, sample_tree, "--time", "2026-03-02T12:00:00Z")
    assert second["bytes_read"] < first["bytes_read"]  # incremental

    assert [s["id"] for s in snapshots(run, store)] == [first["id"], second["id"]]
    assert_restores(run, store, first["id"], sample_tree, first_tree, tmp_path)

    client = s3.client()
    try:
        packs_before = _objects(client, bucket, "backups/host/data/")
        assert any(size > 8 * 1024 * 1024 for size in _sizes(client, bucket, "backups/host/data/"))
        # what a backup killed mid-pack leaves: an upload under its session's name
        client.create_multipart_upload(Bucket=bucket, Key=f"backups/host/tmp/{'0' * 32}-1.tmp")
        assert len(client.list_multipart_uploads(Bucket=bucket)["Uploads"]) == 1
        done = json.loads(run("backup", "prune", store, "--keep-last", "1", "--json").out)
        assert done["removed"] == 1
        gc = json.loads(run("backup", "gc", store, "--json").out)
        assert gc["done"] is True and gc["bytes_freed"] >= 9 * 1024 * 1024
        assert [s["id"] for s in snapshots(run, store)] == [second["id"]]
        assert_intact(run, store)  # reads every pack left
        assert_restores(run, store, second["id"], sample_tree, second_tree, tmp_path)
        assert _objects(client, bucket, "backups/host/data/") != packs_before
        # nothing left behind: no sessions, no writes in progress (the dead one's aborted by
        # gc), no gc state
        for kind in ("locks/", "tmp/", "gc/"):
            assert _objects(client, bucket, "backups/host/" + kind) == []
        assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    finally:
        client.close()

    again = run("backup", "init", store, *KDF, check=False)
    assert_one_line_error(again, "already exists", store)


def _sizes(client, bucket, prefix):
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o["Size"] for page in pages for o in page.get("Contents", [])]


def test_settings_instead_of_aws_variables(run, s3, tmp_path):
    """s3_endpoint, s3_addressing_style and s3_credentials_file from isidorus.toml."""
    env = s3.env()
    creds = tmp_path / "s3.credentials"
    creds.write_text(
        "[default]\n"
        f"aws_access_key_id = {env['AWS_ACCESS_KEY_ID']}\n"
        f"aws_secret_access_key = {env['AWS_SECRET_ACCESS_KEY']}\n"
    )
    config = tmp_path / "isidorus.toml"
    config.write_text(
        f's3_endpoint = "{s3.url}"\ns3_addressing_style = "path"\ns3_credentials_file = "{creds}"\n'
    )
    unset = {"AWS_ENDPOINT_URL": None, "AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None}
    store = f"s3://{s3.new_bucket()}/x"
    run("backup", "init", store, *KDF, env={**unset, "ISIDORUS_CONFIG": str(config)})
    assert snapshots(run, store) == []  # and with the AWS variables again
    r = run("backup", "list", store, env=unset, check=False)  # neither
    assert_one_line_error(r, "no S3 credentials found", "AWS_ACCESS_KEY_ID")


def test_errors_are_one_line(run, s3, s3_server_refusing):
    r = run("backup", "list", "s3://no-such-bucket/x", check=False)
    assert_one_line_error(r, "bucket no-such-bucket does not exist", "backup init")

    empty = f"s3://{s3.new_bucket()}/nothing"
    r = run("backup", "list", empty, check=False)
    assert_one_line_error(r, "is not an isidorus store", "backup init")

    down = f"http://127.0.0.1:{free_port()}"
    r = run(
        "backup", "list", "s3://bucket/x",
        env={"AWS_ENDPOINT_URL": down, "AWS_MAX_ATTEMPTS": "1"}, check=False,
    )  # fmt: skip
    assert_one_line_error(r, f"cannot reach the S3 endpoint {down}", "AWS_ENDPOINT_URL")

    r = run("backup", "list", "s3://bucket/x", env=s3_server_refusing.env(), check=False)
    assert_one_line_error(r, "refused the S3 credentials", "AWS_SECRET_ACCESS_KEY")

    r = run("backup", "list", "s3:///x", check=False)
    assert r.code == 2
    assert_one_line_error(r, "names no valid bucket")

    r = run("backup", "list", "s3://b/x", env={"ISIDORUS_S3_ADDRESSING_STYLE": "dns"}, check=False)
    assert_one_line_error(r, "s3_addressing_style 'dns'")
