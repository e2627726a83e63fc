"""Sizes and delays as people write them: `500G`, `1.5T`, `800MiB`, `2M` (a rate in bytes a
second); `14d`, `36h`, `90m`."""

from __future__ import annotations

import re

from isidorus.errors import UsageError

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4, "p": 1024**5}


def parse_size(text: str, what: str = "size") -> int:
    """Bytes, in powers of 1024; a bare number is bytes."""
    m = _SIZE.fullmatch(text.strip())
    if not m:
        raise UsageError(f"{text!r} is not a {what}: write a number with K, M, G or T (500G)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


DAY = 86400


def parse_delay(text: str) -> float:
    """`14d`, `36h`, `90m`, `0` → seconds."""
    text = text.strip().lower()
    units = {"d": DAY, "h": 3600, "m": 60, "s": 1}
    try:
        if text and text[-1] in units:
            value = float(text[:-1]) * units[text[-1]]
        else:
            value = float(text) * DAY
    except ValueError:
        raise UsageError(
            f"{text!r} is not a delay: write a number of days (14d), hours (36h) or minutes (90m)"
        ) from None
    if value < 0:
        raise UsageError(f"{text!r} is negative: a delay is 0 or more")
    return value


def human_bytes(n: float) -> str:
    """`812 B`, `3.4 MiB`, `1.2 TiB`."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"
