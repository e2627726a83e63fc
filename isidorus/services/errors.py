from __future__ import annotations

from isidorus.errors import UsageError


class ManifestError(UsageError):
    """A manifest is not valid: the message names the file, the field and the fix."""
