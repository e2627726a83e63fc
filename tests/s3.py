"""An S3 server of the tests' own: moto's, run as a separate process on a free port of
127.0.0.1 and spoken to over HTTP, as a user's server would be.

moto keeps everything in memory and takes any credentials unless started with
`INITIAL_NO_AUTH_ACTION_COUNT=0`, when it refuses every key it does not know. Its minimum
part size is lowered so that multipart uploads can be tried with small objects.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

ACCESS_KEY = "tests-own-access-key"
SECRET_KEY = "tests-own-secret-key"
REGION = "us-east-1"
MIN_PART_SIZE = 64 * 1024
TIMEOUT = 30  # seconds to start or stop


class MotoServer:
    def __init__(self, url: str, log: Path) -> None:
        self.url = url
        self.log = log
        self._names = itertools.count(1)

    def env(self) -> dict[str, str]:
        """The variables that point the AWS libraries, and so isidorus, at this server."""
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": REGION,
        }

    def client(self) -> Any:
        """A plain boto3 client of this server, to look behind the backend's back."""
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
            config=Config(request_checksum_calculation="when_required"),
        )

    def bucket_name(self) -> str:
        """A name no test has used (the bucket is not made)."""
        return f"test-{next(self._names)}-{secrets.token_hex(4)}"

    def new_bucket(self) -> str:
        name = self.bucket_name()
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        finally:
            client.close()
        return name


def moto_server_program() -> str:
    beside = Path(sys.executable).with_name("moto_server")
    assert beside.exists(), "moto_server is not installed: scripts/bootstrap test"
    return str(beside)


@contextlib.contextmanager
def running_moto(root: Path, *, auth: bool = False) -> Iterator[MotoServer]:
    """Start moto's S3 server, wait until it listens, and stop it at the end."""
    root.mkdir(parents=True, exist_ok=True)
    log = root / "moto.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["S3_UPLOAD_PART_MIN_SIZE"] = str(MIN_PART_SIZE)
    if auth:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [moto_server_program(), "-H", "127.0.0.1", "-p", "0"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        deadline = time.monotonic() + TIMEOUT
        while True:
            found = re.search(rb"Running on (http://127\.0\.0\.1:\d+)", log.read_bytes())
            if found:
                break
            assert proc.poll() is None, f"moto_server stopped: {log.read_text()}"
            assert time.monotonic() < deadline, f"moto_server did not start: {log.read_text()}"
            time.sleep(0.05)
        yield MotoServer(found.group(1).decode(), log)
    finally:
        proc.terminate()
        try:
            proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(TIMEOUT)
