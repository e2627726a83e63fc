"""The health helpers that name what holds a service's port."""

from __future__ import annotations

import os
import socket

from isidorus.services.health import port_holder, port_is_free


def test_a_listening_port_is_busy_and_its_holder_named():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.listen()
        assert not port_is_free(port)
        assert f"pid {os.getpid()}" in port_holder(port)
    assert port_is_free(port)
    assert port_holder(port) == ""
