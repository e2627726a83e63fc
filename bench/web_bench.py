#!/usr/bin/env python3
"""Web benchmark: isidorus's public page, portal and `/auth/check`, against nginx serving a
static file, under the same loopback load (wrk, 100 connections), in one run; and the same
file behind nginx's auth_request to isidorus, as isidorus publishes a service.

Usage: bench/web_bench.py [--duration 10] [--connections 100] [--runs 3] [--threads 1]
                          [--workers N] [--json FILE]
Needs: wrk, nginx, and isidorus installed (scripts/bootstrap).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2 as httpx

from isidorus.system.nginx import Nginx, Site

HERE = Path(__file__).resolve().parent
ISIDORUS = str(Path(sys.executable).with_name("isidorus"))
PASSWORD = "a long benchmark passphrase"

NGINX = """
worker_processes 1;
error_log {prefix}/error.log;
pid {prefix}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/tmp; proxy_temp_path {prefix}/tmp;
    fastcgi_temp_path {prefix}/tmp; uwsgi_temp_path {prefix}/tmp; scgi_temp_path {prefix}/tmp;
    server {{
        listen 127.0.0.1:{port};
        root {prefix}/www;
    }}
    include {prefix}/shared.conf;
    server {{
        listen 127.0.0.1:{protected};
        server_name 127.0.0.1;
        include {prefix}/site.conf;
    }}
}}
"""
# the groups the protected site is open to: nginx sends them with each check, and the
# logged-in admin passes as admins do
ALLOW = "family"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(port: int, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(400):
        if proc.poll() is not None:
            raise SystemExit(f"a server exited early (code {proc.returncode})")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def wrk(
    url: str, headers: list[str], duration: int, connections: int, threads: int
) -> tuple[float, float]:
    """Requests per second and p99 latency in milliseconds."""
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", url]
    for header in headers:
        cmd[1:1] = ["-H", header]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    value, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
    p99 = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if bad:
        raise SystemExit(f"{url}: {bad.group(1)} answers were errors")
    return rps, p99


def login(base: str) -> tuple[str, list[float]]:
    """A session cookie, and the time of each of 10 logins (Argon2id) in milliseconds."""
    times = []
    with httpx.Client(base_url=base) as c:
        for _ in range(10):
            c.cookies.clear()
            page = c.get("/login")
            csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
            t = time.perf_counter()
            r = c.post("/login", data={"csrf": csrf, "name": "admin", "password": PASSWORD})
            times.append((time.perf_counter() - t) * 1000)
            assert r.status_code in (200, 303), r.status_code
        return str(c.cookies["isidorus_session"]), times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=100)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1,
        help="isidorus serve's processes (default: one per core, as serve starts)",
    )  # fmt: skip
    ap.add_argument(
        "--threads", type=int, default=1,
        help="wrk's threads (default 1: one event loop drives every connection and leaves "
        "the other core to the servers under test)",
    )  # fmt: skip
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    for tool in ("wrk", "nginx"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: apt-get install {tool}")
    work = Path(tempfile.mkdtemp(prefix="isidorus-web-bench-"))
    work.chmod(0o755)  # nginx workers read the static file as another user
    procs: list[subprocess.Popen[bytes]] = []
    try:
        home = work / "host"
        subprocess.run(
            [ISIDORUS, "init", "--data-dir", home, "--password-stdin"],
            input=PASSWORD.encode() + b"\n", check=True, capture_output=True,
        )  # fmt: skip
        www = work / "nginx" / "www"
        www.mkdir(parents=True)
        (work / "nginx" / "tmp").mkdir()
        # a static page of the size of isidorus's public page
        public_size = 0
        ports = {"isidorus": free_port(), "nginx": free_port(), "protected": free_port()}
        web = subprocess.Popen(
            [ISIDORUS, "serve", "--data-dir", home, "--listen", f"127.0.0.1:{ports['isidorus']}",
             "--workers", str(args.workers)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        procs.append(web)
        wait_for(ports["isidorus"], web)
        base = f"http://127.0.0.1:{ports['isidorus']}"
        public_size = len(httpx.get(base + "/").content)
        (www / "index.html").write_bytes(b"x" * public_size)
        # the static file as a service published with single sign-on: the site and the
        # shared file exactly as isidorus writes them (auth_request to /auth/check)
        sites = Nginx(str(work / "nginx"), f"{base}/auth/check", f"{base}/login")
        site = Site(
            service="static", domain="127.0.0.1", path="/", port=ports["nginx"], sso="header",
            sso_header="X-Remote-User", allow=(ALLOW,), tls=None, listen_http=ports["protected"],
        )  # fmt: skip
        (work / "nginx" / "shared.conf").write_text(sites.render_shared())
        (work / "nginx" / "site.conf").write_text(sites.render(site))
        conf = work / "nginx" / "nginx.conf"
        conf.write_text(
            NGINX.format(prefix=work / "nginx", port=ports["nginx"], protected=ports["protected"])
        )
        ngx = subprocess.Popen(
            ["nginx", "-c", str(conf), "-p", str(work / "nginx"), "-g", "daemon off;"],
            stderr=subprocess.DEVNULL,
        )
        procs.append(ngx)
        wait_for(ports["nginx"], ngx)
        cookie, login_ms = login(base)
        session = f"Cookie: isidorus_session={cookie}"
        # /auth/check as nginx asks it: the browser's cookie and the site's groups
        check = [session, f"X-Isidorus-Allow: {ALLOW}"]
        protected = f"http://127.0.0.1:{ports['protected']}/index.html"
        assert httpx.get(protected, headers={"Cookie": session[8:]}).status_code == 200
        assert httpx.get(protected).status_code == 302  # not logged in: to the login page
        targets: dict[str, tuple[str, list[str]]] = {
            "nginx static file": (f"http://127.0.0.1:{ports['nginx']}/index.html", []),
            "public page /": (base + "/", []),
            "portal /portal": (base + "/portal", [session]),
            "auth check /auth/check": (base + "/auth/check", check),
            "file behind auth_request": (protected, [session]),
        }
        results: dict[str, list[tuple[float, float]]] = {k: [] for k in targets}
        for _ in range(args.runs):  # interleaved, so that noise hits every target alike
            for name, (url, c) in targets.items():
                results[name].append(wrk(url, c, args.duration, args.connections, args.threads))
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)
    med = {
        k: (statistics.median(r for r, _ in v), statistics.median(p for _, p in v))
        for k, v in results.items()
    }
    ref_rps, ref_p99 = med["nginx static file"]
    print(
        f"wrk, {args.threads} thread(s), {args.connections} connections, {args.duration} s, "
        f"median of {args.runs} runs; "
        f"isidorus serve --workers {args.workers}, nginx worker_processes 1"
    )
    print(f"{'target':26} {'req/s':>9} {'p99 ms':>8} {'req/s vs nginx':>15} {'p99 vs nginx':>13}")
    for k, (rps, p99) in med.items():
        print(f"{k:26} {rps:9.0f} {p99:8.2f} {rps / ref_rps:15.2f} {p99 / ref_p99:13.1f}")
    print(f"login (Argon2id), median of 10: {statistics.median(login_ms):.0f} ms")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"args": vars(args), "runs": results, "median": med, "login_ms": login_ms},
                indent=1,
            )
        )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
