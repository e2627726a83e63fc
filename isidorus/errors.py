"""The root of every error isidorus raises on purpose.

    IsidorusError                 exit 1, HTTP 500
    ├── UsageError                exit 2, HTTP 400   bad input from the person
    ├── NotFoundError             exit 1, HTTP 404
    └── (package errors)          see isidorus.backup.errors

Each class carries the exit code a command ends with and the HTTP status the web answers
with, so the frontends map an error once, in one place. The message is one line that names
the cause and, where there is one, the fix.
"""

from __future__ import annotations


class IsidorusError(Exception):
    exit_code: int = 1
    http_status: int = 500


class UsageError(IsidorusError):
    exit_code = 2
    http_status = 400


class NotFoundError(IsidorusError):
    exit_code = 1
    http_status = 404


def one_line(exc: BaseException) -> str:
    """An error as one line (a step's error, a page's reason): an OSError's reason and
    file, else its message with its white space folded."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}{f' {exc.filename}' if exc.filename else ''}"
    return " ".join(str(exc).split()) or type(exc).__name__
