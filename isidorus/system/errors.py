"""Errors of the host's machinery.

IsidorusError
└── HostError          a program of the host failed (apt, nginx, supervisorctl, useradd…)
    └── HostTimeout    it did not finish in time
"""

from __future__ import annotations

from isidorus.errors import IsidorusError


class HostError(IsidorusError):
    pass


class HostTimeout(HostError):
    pass
