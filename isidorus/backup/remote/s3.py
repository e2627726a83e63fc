"""A store in an S3 bucket, `s3://BUCKET/PREFIX`: Amazon S3 or any server that speaks its
API (Ceph RGW, Garage, MinIO, hosted ones).

The keys are the paths of the local layout under PREFIX/ (`config`, `keys/<name>`,
`data/<xx>/<name>`, `locks/<name>`, …), so a store copied object by object between a
directory and a bucket is still a store. How the contract of base.py holds here:

* A PUT is all or nothing, and S3 answers only once the object is stored durably (Amazon:
  on several devices in several zones; other servers: as their operators configure them).
* Immutable objects and exclusive writes go out with `If-None-Match: *`, which the server
  refuses (412) when the name exists. A server that rejects that header is sent a HEAD
  before the PUT instead; exclusive writes always get that HEAD too, for servers that
  ignore the header. The HEAD leaves a short race between two writers of one name: the same
  bytes for content-named objects, so harmless; only `locks/exclusive` could be taken twice.
* An upload (a pack) is streamed as a multipart upload in parts of PART_SIZE, at most
  _PARTS_IN_FLIGHT of them buffered or on the wire, under `tmp/<session>-<random>.tmp`,
  so that `clean_tmp` can find and abort those of dead sessions. On commit the finished
  object is copied to its name on the server (S3 cannot rename) and the temporary one
  removed. An upload no larger than one part is a single PUT.
* Every PUT and part carries Content-MD5, so the server checks what it stores. The newer
  default checksums of botocore are turned off: several servers reject them.
* botocore retries throttling, 5xx and dropped connections with backoff; what is left
  becomes BackendError (`permanent` when trying again cannot help) or, for a missing
  object, FileNotFoundError.
* The client is thread-safe; the session that makes it is not and is used only here.
"""

from __future__ import annotations

import base64
import collections
import concurrent.futures
import contextlib
import hashlib
import os
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import boto3
import botocore.loaders
import botocore.session
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    ProfileNotFound,
    SSLError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from isidorus.backup.errors import BackendError, StoreError
from isidorus.backup.remote.base import KINDS, MUTABLE_KINDS
from isidorus.errors import UsageError

if TYPE_CHECKING:
    from types_boto3_s3.client import S3Client
    from types_boto3_s3.type_defs import CompletedPartTypeDef

PART_SIZE = 8 * 1024 * 1024  # S3 wants at least 5 MiB in every part but the last
_PARTS_IN_FLIGHT = 2  # per upload: bounds its memory to about three parts
_PART_WORKERS = 4  # parts sent at once, over all uploads of one store
_ATTEMPTS = 5  # botocore's tries of one request, unless AWS_MAX_ATTEMPTS or a profile says
_BODY_TRIES = 3  # reading a response body is not retried by botocore
ADDRESSING_STYLES = ("auto", "path", "virtual")

_MISSING = frozenset({"NoSuchKey", "NotFound", "404"})
_BAD_CREDENTIALS = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "TokenRefreshRequired",
        "InvalidSecurity",
    }
)
_DENIED = frozenset({"AccessDenied", "AllAccessDisabled", "AccountProblem", "403"})
_FULL = frozenset({"XMinioStorageFull", "QuotaExceeded", "InsufficientStorage", "507"})
_TRANSIENT = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestTimeout",
        "InternalError",
        "ServiceUnavailable",
        "OperationAborted",
        "ConditionalRequestConflict",
    }
)
_UNSUPPORTED = frozenset({"NotImplemented", "501"})


@dataclass(frozen=True)
class S3Options:
    """What isidorus's own settings add to the AWS ones (environment, config files).
    Empty means: as AWS_* variables and ~/.aws/config say."""

    endpoint: str = ""  # e.g. https://s3.example.org
    region: str = ""
    addressing_style: str = "auto"  # path: https://HOST/BUCKET/KEY, for MinIO or Garage
    credentials_file: str = ""  # an AWS credentials file (INI), else the usual places


def parse_url(url: str) -> tuple[str, str]:
    """(bucket, key prefix) of `s3://bucket/some/prefix`; the prefix is empty or ends in /."""
    if not url.startswith("s3://"):
        raise UsageError(f"{url} is not an S3 store: write s3://BUCKET/PREFIX")
    bucket, _, path = url[len("s3://") :].partition("/")
    if not bucket or not all(c.isalnum() or c in ".-_" for c in bucket):
        raise UsageError(f"{url} names no valid bucket: write s3://BUCKET/PREFIX")
    parts = [p for p in path.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise UsageError(f"{url}: '.' and '..' are not allowed in the prefix")
    return bucket, "".join(p + "/" for p in parts)


def _md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


class S3Upload:
    """A pack on its way: parts go out in the background as the pack is written. Used by
    one thread at a time, like every Upload."""

    def __init__(self, backend: S3Backend) -> None:
        self.backend = backend
        self.key = backend._key("tmp", f"{backend.tmp_tag}-{secrets.token_hex(8)}.tmp")
        self.buf = bytearray()
        self.upload_id: str | None = None
        self.parts: list[concurrent.futures.Future[CompletedPartTypeDef]] = []
        self.pending: collections.deque[concurrent.futures.Future[CompletedPartTypeDef]] = (
            collections.deque()
        )
        self.completed = False  # the temporary object exists

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.buf += data
        size = self.backend.part_size
        try:
            while len(self.buf) >= size:
                part = bytes(self.buf[:size])
                del self.buf[:size]
                self._send(part)
        except BaseException:
            self.abort()
            raise

    def _send(self, part: bytes) -> None:
        b = self.backend
        if self.upload_id is None:
            self.upload_id = b._call(
                "start an upload", b.client.create_multipart_upload, Bucket=b.bucket, Key=self.key
            )["UploadId"]
        while len(self.pending) >= _PARTS_IN_FLIGHT:
            self.pending.popleft().result()  # raises the part's error
        number = len(self.parts) + 1
        future = b._executor().submit(b._upload_part, self.key, self.upload_id, number, part)
        self.parts.append(future)
        self.pending.append(future)

    def commit(self, kind: str, name: str) -> None:
        b = self.backend
        try:
            if self.upload_id is None:
                b.write(kind, name, self.buf)  # small enough for one PUT
            else:
                if self.buf:
                    self._send(bytes(self.buf))
                    self.buf = bytearray()
                parts = [f.result() for f in self.parts]
                b._call(
                    f"finish the upload of {kind}/{name}",
                    b.client.complete_multipart_upload,
                    Bucket=b.bucket,
                    Key=self.key,
                    UploadId=self.upload_id,
                    MultipartUpload={"Parts": parts},
                )
                self.upload_id = None
                self.completed = True
                b._publish(self.key, kind, name)
        except BaseException:
            self.abort()
            raise
        self.buf = bytearray()
        if self.completed:
            # the object is in place; a temporary copy left over goes with the next gc
            with contextlib.suppress(BackendError):
                b._call(
                    "remove a finished upload",
                    b.client.delete_object,
                    Bucket=b.bucket,
                    Key=self.key,
                )
            self.completed = False

    def abort(self) -> None:
        """Drop the upload; what cannot be removed now is removed by clean_tmp later."""
        b = self.backend
        self.buf = bytearray()
        for f in self.parts:
            f.cancel()
        # parts still on the wire would outlive an abort: wait for them first
        concurrent.futures.wait(self.parts)
        self.parts, self.pending = [], collections.deque()
        with contextlib.suppress(BackendError):
            if self.upload_id is not None:
                upload_id, self.upload_id = self.upload_id, None
                b._abort_multipart(self.key, upload_id)
            if self.completed:
                self.completed = False
                b._call("remove an upload", b.client.delete_object, Bucket=b.bucket, Key=self.key)


class S3Backend:
    """A store under a prefix of an S3 bucket. Thread-safe."""

    def __init__(
        self, url: str, options: S3Options | None = None, *, part_size: int = PART_SIZE
    ) -> None:
        opts = options or S3Options()
        self.bucket, self.prefix = parse_url(url)
        self.location = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        self.tmp_tag = "nosession"
        self.part_size = part_size
        self.client = _make_client(opts)
        self.endpoint = self.client.meta.endpoint_url
        self._conditional = True  # until the server says it does not do If-None-Match
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    # -- keys and calls
    def _key(self, kind: str, name: str) -> str:
        if kind == "config":
            return self.prefix + "config"
        if (kind not in KINDS and kind != "tmp") or not name or "/" in name or name[0] == ".":
            raise ValueError(f"bad object address {kind}/{name}")
        if kind == "data":
            return f"{self.prefix}data/{name[:2]}/{name}"
        return f"{self.prefix}{kind}/{name}"

    def _call(self, what: str, fn: Any, /, **kwargs: Any) -> Any:
        try:
            return fn(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, what) from exc

    def _executor(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    _PART_WORKERS, thread_name_prefix="s3-part"
                )
            return self._pool

    def _error(self, exc: BaseException, what: str) -> BackendError:
        """One line naming the cause and the fix, for an error of botocore."""
        if isinstance(exc, ClientError):
            code, status = _code(exc), _status(exc)
            detail = _one_line(exc.response.get("Error", {}).get("Message", "") or code)
            if code == "NoSuchBucket":
                return BackendError(
                    f"the bucket {self.bucket} does not exist at {self.endpoint}: check the "
                    "store's URL and endpoint, or create the store with `isidorus backup init`"
                )
            if code in _BAD_CREDENTIALS:
                return BackendError(
                    f"{self.endpoint} refused the S3 credentials ({code}): check "
                    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or the profile "
                    "(AWS_PROFILE, ~/.aws/credentials, s3_credentials_file)"
                )
            if code == "RequestTimeTooSkewed":
                return BackendError(
                    f"{self.endpoint} refused the request: this machine's clock is wrong; "
                    "set it (e.g. with systemd-timesyncd)"
                )
            if code in _DENIED or status == 403:
                return BackendError(
                    f"access to {what} in bucket {self.bucket} was denied ({code}): check the "
                    "credentials, and that they may read and write that bucket"
                )
            if code in _FULL or status == 507:
                return BackendError(
                    f"the S3 store is full while writing {what} ({code}): free space or raise "
                    "the quota, then run the command again (nothing was lost)"
                )
            if code in _TRANSIENT or (status >= 500 and status != 501) or status in (408, 429):
                return BackendError(
                    f"{self.endpoint} failed on {what} ({code}: {detail}): try again later",
                    permanent=False,
                )
            return BackendError(f"S3 error on {what} in {self.location}: {code}: {detail}")
        if isinstance(exc, SSLError):
            return BackendError(
                f"TLS with {self.endpoint} failed ({_one_line(exc)}): check the endpoint's "
                "certificate (AWS_CA_BUNDLE names another CA bundle)"
            )
        if isinstance(exc, BotoConnectionError):
            return BackendError(
                f"cannot reach the S3 endpoint {self.endpoint}: check the endpoint "
                "(AWS_ENDPOINT_URL, s3_endpoint) and the network",
                permanent=False,
            )
        if isinstance(exc, HTTPClientError | IncompleteReadError):
            return BackendError(
                f"the connection to {self.endpoint} broke during {what}: try again",
                permanent=False,
            )
        if isinstance(exc, NoCredentialsError):
            return BackendError(_NO_CREDENTIALS)
        return BackendError(f"S3 request for {what} failed: {_one_line(exc)}")

    def _head(self, key: str, what: str) -> int | None:
        """The size of an object, or None when there is none."""
        try:
            return self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"]
        except ClientError as exc:
            if _code(exc) in _MISSING or _status(exc) == 404:
                return None
            raise self._error(exc, what) from exc
        except BotoCoreError as exc:
            raise self._error(exc, what) from exc

    def _get(self, key: str, what: str, first: int = 0, last: int | None = None) -> bytes:
        for attempt in range(_BODY_TRIES):
            try:
                if last is None:
                    resp = self.client.get_object(Bucket=self.bucket, Key=key)
                else:
                    resp = self.client.get_object(
                        Bucket=self.bucket, Key=key, Range=f"bytes={first}-{last}"
                    )
            except ClientError as exc:
                if _code(exc) in _MISSING:
                    raise FileNotFoundError(f"{self.location}/{what}") from None
                if _code(exc) == "InvalidRange":
                    raise BackendError(f"{what} is shorter than expected (truncated?)") from None
                raise self._error(exc, what) from exc
            except BotoCoreError as exc:
                raise self._error(exc, what) from exc
            try:
                with contextlib.closing(resp["Body"]) as body:
                    return body.read()
            except (HTTPClientError, IncompleteReadError) as exc:
                if attempt == _BODY_TRIES - 1:
                    raise self._error(exc, what) from exc
                time.sleep(0.2 * 2**attempt)
        raise AssertionError("unreachable")

    def _put(self, key: str, data: bytes, what: str, *, if_none_match: bool = False) -> bool:
        """PUT an object; with if_none_match, write nothing and return False when the key
        exists."""
        md5 = _md5(data)
        if if_none_match and self._conditional:
            for attempt in range(3):
                try:
                    self.client.put_object(
                        Bucket=self.bucket, Key=key, Body=data, ContentMD5=md5, IfNoneMatch="*"
                    )
                    return True
                except ClientError as exc:
                    code = _code(exc)
                    if code == "PreconditionFailed" or _status(exc) == 412:
                        return False
                    if code == "ConditionalRequestConflict" and attempt < 2:
                        time.sleep(0.1)  # another write of this key was under way: ask again
                        continue
                    if code not in _UNSUPPORTED and _status(exc) != 501:
                        raise self._error(exc, what) from exc
                    self._conditional = False
                    break
                except BotoCoreError as exc:
                    raise self._error(exc, what) from exc
        if if_none_match and self._head(key, what) is not None:
            return False
        self._call(
            f"write {what}",
            self.client.put_object,
            Bucket=self.bucket,
            Key=key,
            Body=data,
            ContentMD5=md5,
        )
        return True

    def _upload_part(
        self, key: str, upload_id: str, number: int, part: bytes
    ) -> CompletedPartTypeDef:
        resp = self._call(
            f"send part {number} of an upload",
            self.client.upload_part,
            Bucket=self.bucket,
            Key=key,
            UploadId=upload_id,
            PartNumber=number,
            Body=part,
            ContentMD5=_md5(part),
        )
        return {"ETag": resp["ETag"], "PartNumber": number}

    def _abort_multipart(self, key: str, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except ClientError as exc:
            if _code(exc) != "NoSuchUpload":  # already gone
                raise self._error(exc, "abort an upload") from exc
        except BotoCoreError as exc:
            raise self._error(exc, "abort an upload") from exc

    def _publish(self, tmp_key: str, kind: str, name: str) -> None:
        """Copy a finished upload to its name, on the server. An immutable object that
        exists already has these bytes (its name is their hash) and is left alone. Packs are
        far below the 5 GiB a single copy may hold."""
        key = self._key(kind, name)
        if kind not in MUTABLE_KINDS and self._head(key, f"{kind}/{name}") is not None:
            return
        self._call(
            f"write {kind}/{name}",
            self.client.copy_object,
            Bucket=self.bucket,
            Key=key,
            CopySource={"Bucket": self.bucket, "Key": tmp_key},
        )

    def _keys(self, prefix: str) -> Iterator[tuple[str, int]]:
        """(key, size) of every object under a prefix, a thousand a request."""
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        try:
            for page in pages:
                for obj in page.get("Contents", []):
                    yield obj["Key"], obj["Size"]
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, f"the list of {prefix or '/'}") from exc

    # -- protocol
    def create(self) -> None:
        self._ensure_bucket()
        if self._head(self.prefix + "config", "config") is not None:
            raise FileExistsError(self.location)
        keys = self.prefix + "keys/"
        tmp = self.prefix + "tmp/"
        leftovers: list[str] = []
        for key, _size in self._keys(self.prefix):
            if not key.startswith((keys, tmp)):
                raise StoreError(
                    f"{self.location} is not empty and holds no store: choose an empty "
                    "bucket or another prefix"
                )
            if key.startswith(keys):
                leftovers.append(key)
        # an init that stopped before its config was written: start again from scratch
        for key in leftovers:
            self._call("remove a key file", self.client.delete_object, Bucket=self.bucket, Key=key)

    def _ensure_bucket(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if _status(exc) != 404:
                raise self._error(exc, f"bucket {self.bucket}") from exc
        except BotoCoreError as exc:
            raise self._error(exc, f"bucket {self.bucket}") from exc
        region = self.client.meta.region_name
        try:
            if region and region not in ("us-east-1", "aws-global"):
                self.client.create_bucket(
                    Bucket=self.bucket,
                    CreateBucketConfiguration={"LocationConstraint": cast(Any, region)},
                )
            else:
                self.client.create_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if _code(exc) == "BucketAlreadyOwnedByYou":
                return  # made by another init just now
            if _code(exc) == "BucketAlreadyExists":
                raise BackendError(
                    f"the bucket name {self.bucket} is taken by another account: choose another"
                ) from None
            err = self._error(exc, f"create bucket {self.bucket}")
            raise BackendError(
                f"{err} (or create the bucket with your provider's tools)",
                permanent=err.permanent,
            ) from exc
        except BotoCoreError as exc:
            raise self._error(exc, f"create bucket {self.bucket}") from exc

    def exists(self, kind: str, name: str) -> bool:
        return self._head(self._key(kind, name), f"{kind}/{name}") is not None

    def read(self, kind: str, name: str) -> bytes:
        return self._get(self._key(kind, name), f"{kind}/{name}")

    def read_range(self, kind: str, name: str, offset: int, length: int) -> bytes:
        key, what = self._key(kind, name), f"{kind}/{name}"
        if length == 0:  # no Range header asks for nothing
            size = self._head(key, what)
            if size is None:
                raise FileNotFoundError(f"{self.location}/{what}")
            data = b""
        else:
            size = None
            data = self._get(key, what, offset, offset + length - 1)
        if len(data) != length or (size is not None and offset > size):
            raise BackendError(f"{what} is shorter than expected (truncated?)")
        return data

    def write(
        self, kind: str, name: str, data: bytes | bytearray | memoryview, *, exclusive: bool = False
    ) -> None:
        key, what = self._key(kind, name), f"{kind}/{name}"
        body = bytes(data)
        if kind in MUTABLE_KINDS and not exclusive:
            self._put(key, body, what)
            return
        # for servers that ignore If-None-Match, so that a lock is not taken twice
        if exclusive and self._head(key, what) is not None:
            raise FileExistsError(f"{self.location}/{what}")
        if not self._put(key, body, what, if_none_match=True) and exclusive:
            raise FileExistsError(f"{self.location}/{what}")
        # else: same name, same content (names are content hashes): already there

    def upload(self) -> S3Upload:
        return S3Upload(self)

    def remove(self, kind: str, name: str) -> None:
        key = self._key(kind, name)
        self._call(f"remove {kind}/{name}", self.client.delete_object, Bucket=self.bucket, Key=key)

    def list(self, kind: str) -> Iterator[tuple[str, int]]:
        if kind not in KINDS:
            raise ValueError(f"bad kind {kind}")
        prefix = f"{self.prefix}{kind}/"
        for key, size in self._keys(prefix):
            rest = key[len(prefix) :]
            name = rest.rsplit("/", 1)[-1]
            where = f"{name[:2]}/{name}" if kind == "data" else name
            if name and not name.startswith(".") and rest == where:
                yield name, size

    def clean_tmp(self, alive: set[str]) -> None:
        prefix = self.prefix + "tmp/"

        def dead(key: str) -> bool:
            return key[len(prefix) :].split("-", 1)[0] not in alive

        pages = self.client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        try:
            uploads = [(u["Key"], u["UploadId"]) for page in pages for u in page.get("Uploads", [])]
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "the list of uploads in progress") from exc
        for key, upload_id in uploads:
            if dead(key):
                self._abort_multipart(key, upload_id)
        for key, _size in list(self._keys(prefix)):
            if dead(key):
                self._call(
                    "remove an upload", self.client.delete_object, Bucket=self.bucket, Key=key
                )

    def close(self) -> None:
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        self.client.close()  # its connections; new ones are made if used again


# botocore's parsed API descriptions, shared by every client rather than read again for each
_LOADER = botocore.loaders.create_loader()

_NO_CREDENTIALS = (
    "no S3 credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile "
    "(AWS_PROFILE, ~/.aws/credentials, s3_credentials_file)"
)


def _make_client(opts: S3Options) -> S3Client:
    if opts.addressing_style not in ADDRESSING_STYLES:
        raise UsageError(
            f"s3_addressing_style {opts.addressing_style!r} is not one of "
            f"{', '.join(ADDRESSING_STYLES)}: fix the setting"
        )
    core = botocore.session.Session()
    core.register_component("data_loader", _LOADER)
    if opts.credentials_file:
        try:
            with open(opts.credentials_file, "rb"):
                pass
        except OSError as exc:
            raise UsageError(
                f"s3_credentials_file {opts.credentials_file}: {exc.strerror}: fix the "
                "setting, or the file's permissions"
            ) from None
        core.set_config_variable("credentials_file", os.path.abspath(opts.credentials_file))
    try:
        # AWS_MAX_ATTEMPTS or a profile's max_attempts wins over isidorus's default
        attempts = core.get_config_variable("max_attempts") or _ATTEMPTS
        mode = core.get_config_variable("retry_mode") or "standard"
        # Any: the values come from configuration strings, checked by botocore
        retries: Any = {"mode": mode, "total_max_attempts": int(attempts)}
        style: Any = {"addressing_style": opts.addressing_style}
        config = Config(
            retries=retries,
            connect_timeout=10,
            read_timeout=60,
            max_pool_connections=32,  # backup workers and part uploads at once
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            s3=style if opts.addressing_style != "auto" else None,
        )
        session = boto3.session.Session(botocore_session=core)
        return session.client(
            "s3",
            region_name=opts.region or None,
            endpoint_url=opts.endpoint or None,
            config=config,
        )
    except ProfileNotFound as exc:
        raise UsageError(f"{_one_line(exc)}: fix AWS_PROFILE, or add that profile") from None
    except (BotoCoreError, ValueError) as exc:
        raise UsageError(f"the S3 configuration is not usable: {_one_line(exc)}") from None
