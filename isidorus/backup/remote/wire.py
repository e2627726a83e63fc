"""The store protocol spoken over a pipe by `isidorus backup serve --stdio`.

A frame is a 4-byte big-endian length, then that many bytes of msgpack. The client opens
with `["hello", VERSION, {"path": PATH, "ticks": SECONDS}]`; the server answers
`[0, 0, INFO]` (or an error, below) where INFO says `version`, `append_only`, `quota`,
`used` and `ticks`: from then on it also sends `[TICK]`, a sign of life, every `ticks`
seconds (0: never), so the client can tell a cut link from a long wait. Then every request
is `[ID, OP, ARGS...]` and gets exactly one answer, in the order the requests came:

    [ID, 0, RESULT]                      done
    [ID, 1, ERROR, MESSAGE, PERMANENT]   ERROR: "notfound", "exists" or "backend"

The client does not wait for one answer before sending the next request, so a slow, far
link stays full (requests are pipelined); a pack crosses as `upload_open`, a stream of
`upload_write`, then `upload_commit`. The operations are those of `base.Backend` with
(kind, name) addresses only: no request names a file, so none can reach outside the store.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

VERSION = 1
TICK = -1  # the number of a sign of life, which answers nothing
MIN_TICK = 0.1  # seconds: a home sends signs of life no more often than this
MAX_FRAME = 64 * 1024 * 1024  # a pack piece or a listing; anything larger is an attack
_LEN = struct.Struct(">I")

OPS = frozenset(
    {
        "exists",
        "read",
        "read_range",
        "write",
        "replace",
        "remove",
        "list",
        "create",
        "clean_tmp",
        "upload_open",
        "upload_write",
        "upload_commit",
        "upload_abort",
    }
)


class ProtocolError(Exception):
    """The other side sent something that is not this protocol."""


def encode(message: Any) -> bytes:
    body: bytes = msgpack.packb(message, use_bin_type=True)
    return _LEN.pack(len(body)) + body


def frame_length(header: bytes) -> int:
    (n,) = _LEN.unpack(header)
    if n > MAX_FRAME:
        raise ProtocolError(f"a frame of {n} bytes is larger than the protocol allows")
    return int(n)


def decode(body: bytes) -> Any:
    try:
        return msgpack.unpackb(body, raw=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise ProtocolError(f"not a message of the store protocol: {exc}") from None


HEADER = _LEN.size
