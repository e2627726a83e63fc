"""A real nginx of a test's own: Debian's binary, its own prefix, configuration and free
loopback ports, including a sites directory that `isidorus.system.nginx.Nginx` publishes
into. Services' integration tests use it too:

    with running_nginx(tmp_path) as server:
        nginx = server.nginx(auth_url=..., login_url=...)
        nginx.publish(Site(..., listen_http=server.http_port))  # served once it returns
        assert server.get("cal.example.org", "/").status_code == 200
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2

from isidorus.system.nginx import Nginx
from tests.integration.servers import free_port, stop, wait_for_port

CONF = """
{user}
worker_processes 1;
error_log {prefix}/error.log warn;
pid {prefix}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body; proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fcgi; uwsgi_temp_path {prefix}/uwsgi; scgi_temp_path {prefix}/scgi;
    # what answers a host no site is for
    server {{
        listen 127.0.0.1:{http_port} default_server;
        return 404;
    }}
    include {sites}/*.conf;
}}
"""


# `nginx -s reload` only signals the master: the old workers take new connections until
# they have shut down. This waits for them to be gone, and for a new worker to be there.
RELOAD = """
import os, subprocess, sys, time
prefix = sys.argv[sys.argv.index("-p") + 1]
master = open(os.path.join(prefix, "nginx.pid")).read().strip()
def workers():
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = open(f"/proc/{pid}/stat").read()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[1] == master:
            found.add(pid)
    return found
old = workers()
if subprocess.run(sys.argv[1:]).returncode:
    sys.exit(1)
deadline = time.monotonic() + 10
while workers() & old or not workers():
    if time.monotonic() > deadline:
        sys.exit("nginx's old workers did not stop in 10 s")
    time.sleep(0.02)
"""


@dataclass
class NginxServer:
    prefix: Path
    conf: Path
    sites_dir: Path
    http_port: int
    https_port: int  # free, for the sites to listen on with TLS

    def command(self, *args: str) -> tuple[str, ...]:
        return ("nginx", "-c", str(self.conf), "-p", str(self.prefix), *args)

    def reload_command(self) -> tuple[str, ...]:
        """`nginx -s reload` that returns once the new configuration serves every request."""
        return (sys.executable, "-c", RELOAD, *self.command("-s", "reload"))

    def nginx(self, auth_url: str, login_url: str, **kw: Any) -> Nginx:
        """An Nginx that publishes into this server's sites directory, on loopback."""
        return Nginx(
            str(self.sites_dir),
            auth_url=auth_url,
            login_url=login_url,
            test_cmd=self.command("-t"),
            reload_cmd=self.reload_command(),
            addresses=("127.0.0.1",),
            acme_dir=str(self.prefix / "acme"),
            **kw,
        )

    def get(self, host: str, path: str, **kw: Any) -> httpx2.Response:
        """GET http://HOST:PORT/PATH from this nginx, as a browser would (without following
        redirects)."""
        headers = {"Host": f"{host}:{self.http_port}", **kw.pop("headers", {})}
        with httpx2.Client(timeout=10) as client:
            return client.get(f"http://127.0.0.1:{self.http_port}{path}", headers=headers, **kw)


@contextlib.contextmanager
def running_nginx(tmp_path: Path) -> Iterator[NginxServer]:
    """Start nginx (in the foreground of its own process) and stop it at the end."""
    prefix = tmp_path / "nginx"
    sites = prefix / "sites"
    sites.mkdir(parents=True)
    server = NginxServer(prefix, prefix / "nginx.conf", sites, free_port(), free_port())
    # as root, workers would be nobody, who cannot read the test's directories
    user = "user root;" if os.geteuid() == 0 else ""
    server.conf.write_text(
        CONF.format(user=user, prefix=prefix, http_port=server.http_port, sites=sites)
    )
    proc = subprocess.Popen(
        [*server.command("-g", "daemon off;")], stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    try:
        wait_for_port(server.http_port, proc, "nginx")
        yield server
    finally:
        stop([proc])
