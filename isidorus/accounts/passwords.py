"""Password hashing (Argon2id) and the rules a new password must follow."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from isidorus.accounts.errors import InvalidInput

MIN_LENGTH = 10
MAX_LENGTH = 1024

# argon2-cffi's defaults (RFC 9106's second recommendation: 64 MiB, 3 passes): about
# 50 ms here, well inside a login's budget, and costly for anyone guessing offline
_hasher = PasswordHasher()


def check_rules(password: str, *, name: str = "", email: str = "") -> None:
    """Raise InvalidInput naming the rule a new password breaks."""
    if len(password) < MIN_LENGTH:
        raise InvalidInput(
            f"the password is too short: use at least {MIN_LENGTH} characters "
            "(a few unrelated words make a good one)"
        )
    if len(password) > MAX_LENGTH:
        raise InvalidInput(f"the password is longer than {MAX_LENGTH} characters")
    lowered = password.lower()
    # (a one- or two-letter name would forbid half the alphabet)
    if len(name) >= 3 and name.lower() in lowered or email and email.lower() in lowered:
        raise InvalidInput("the password must not contain the login name or e-mail")
    if len(set(password)) < 4:
        raise InvalidInput("the password repeats too few characters: choose a less predictable one")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored: str, password: str) -> bool:
    try:
        return _hasher.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(stored: str) -> bool:
    """After a login: whether the hash was made with older costs and should be redone."""
    try:
        return _hasher.check_needs_rehash(stored)
    except InvalidHashError:
        return True
