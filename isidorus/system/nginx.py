"""Publishing services behind nginx, with TLS and single sign-on.

site            one service published at DOMAIN/PATH: nginx proxies it to the service's
                loopback port
shared file     SITES_DIR/isidorus.conf: what every site uses, at the http level (maps)
domain file     SITES_DIR/isidorus-<domain>.conf: the server blocks of one domain (listen,
                TLS, the redirect to https, ACME's challenge directory); it includes…
location file   …SITES_DIR/isidorus-<domain>.d/<service>.conf: one service's locations

The operator's nginx includes `SITES_DIR/*.conf` inside `http {}`: that reads the shared file
and the domain files, and each domain file reads the location files of its services, so
services share a domain on different paths while each is published and removed on its own.
A domain's server blocks follow the last site published on it (its certificate, its ports).

Single sign-on (`sso = "header"`): nginx asks isidorus's `/auth/check` about each request
(`auth_request`), sending the groups the service is open to in X-Isidorus-Allow; a visitor
not logged in is sent to the login page with `?next=` the address they asked for; a member
not allowed gets 403; the service gets the member's name in its header, which nginx always
sets itself. The other kinds sign their users in themselves; their sites are plain proxies.
Every site drops the identity headers a client sends, so none can pass for a member.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from isidorus.errors import UsageError
from isidorus.system.errors import HostError, HostTimeout
from isidorus.system.run import run
from isidorus.system.tls import Certificate

__all__ = ["Certificate", "Nginx", "Site"]

SHARED = "isidorus.conf"
AUTH_UPSTREAM = "isidorus_auth"
# not inside the host's data directory (/var/lib/isidorus, mode 0700): nginx's workers
# (www-data) read the challenges' proofs from here
ACME_DIR = "/var/lib/isidorus-acme-challenge"
# uploads to file services (copyparty, bepasty…) are refused above this: large enough for
# videos and disk images, small enough that one request cannot fill the disk by accident
BODY_LIMIT = "1g"
# idle websockets (chat) and long polls stay open this long
READ_TIMEOUT = "10m"
TEST_TIMEOUT = 60.0
# headers that name the user to some application: a client never gets to send them
IDENTITY_HEADERS = (
    "X-Remote-User",
    "Remote-User",
    "X-Forwarded-User",
    "X-Forwarded-Email",
    "X-Auth-Request-User",
    "X-Isidorus-User",
    "X-Isidorus-Email",
)
# set by every site: a service's sso header cannot be one of them
PROXY_HEADERS = frozenset(
    h.lower()
    for h in (
        "Host",
        "Connection",
        "Upgrade",
        "Content-Length",
        "X-Real-IP",
        "X-Forwarded-For",
        "X-Forwarded-Proto",
        "X-Forwarded-Host",
        "X-Forwarded-Prefix",
        "X-Script-Name",
        "X-Isidorus-Allow",
    )
)
SSO_KINDS = ("header", "ldap", "oidc", "none")
ESCAPED_UP_TO = 8  # occurrences of each character escaped in ?next= (9 captures at most)

_SERVICE = re.compile(r"[a-z][a-z0-9-]{1,30}")
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*")
_SEGMENT = r"[A-Za-z0-9._~-]*[A-Za-z0-9_~-][A-Za-z0-9._~-]*"  # not only dots
_PATH = re.compile(rf"/|(/{_SEGMENT})+")
_HEADER = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}")
_GROUP = re.compile(r"[a-z][a-z0-9._-]{0,31}")
# quoted in the configuration: no quote, backslash, variable or control character
_FILE = re.compile(r'/[^"\\$\x00-\x1f\x7f]*')
_URL = re.compile(r"https?://([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?(/[^\s\"'\\$;{}]*)?")
_ROOT = re.compile(r"/[A-Za-z0-9._/-]*")
_UPSTREAM_HOST = re.compile(r"[a-z0-9.-]+(:[0-9]{1,5})?")
_INDEX = re.compile(r"[A-Za-z0-9._-]+\.php")
_FOLDER = re.compile(r"/[A-Za-z0-9._-]+/")
_ADDRESS = re.compile(r"\*|[0-9.]+|\[[0-9A-Fa-f:.]+\]")
_SERIOUS = re.compile(r"\[(emerg|alert|crit)\] (?:\d+#\d+: )?(.*)")
_HEAD = re.compile(r"# isidorus-site service=(\S+) domain=(\S+) path=(\S+)\n")


@dataclass(frozen=True)
class Site:
    service: str  # the service's id, e.g. "radicale"
    domain: str  # server_name, e.g. "cal.example.org"
    path: str  # "/" (the whole domain) or "/radicale" (a prefix on a shared domain)
    port: int  # the service's loopback port
    sso: str  # "header" | "ldap" | "oidc" | "none"
    sso_header: str | None  # for "header": the header nginx sets to the user's name
    allow: tuple[str, ...]  # groups allowed; empty: every member (header); ignored otherwise
    tls: Certificate | None  # None: plain http (tests, local use)
    listen_http: int = 80
    listen_https: int = 443
    # a PHP application: its files' folder (None: nginx proxies to the port)
    fastcgi_root: str | None = None
    index: str = "index.php"
    front_controller: bool = False  # requests for no file go to the index
    deny: tuple[str, ...] = ()  # folders of the root never served, like "/data/"
    upstream_host: str | None = None  # the Host the service gets (None: the visitor's)
    aliases: tuple[tuple[str, str], ...] = ()  # ("/wp-content/", folder): files served as is
    # header sign-in: apps that send the member's name and password on each request (HTTP
    # Basic: calendar, contacts, WebDAV) are asked for them rather than sent to the login page
    basic: bool = False


class _Refused(HostError):
    """`nginx -t` failed: the message is nginx's complaint."""


@dataclass(frozen=True)
class _Published:
    service: str
    domain: str
    path: str
    file: str


class Nginx:
    """The sites of the services in SITES_DIR, tested with `test_cmd` before nginx reloads.

    `addresses` are where the sites listen ("*", an IPv4 address, "[::]"…); `acme_dir` is
    served at /.well-known/acme-challenge/ on port 80 of every domain; `hsts` adds
    Strict-Transport-Security to sites whose certificate is not self-signed."""

    def __init__(
        self,
        sites_dir: str,
        auth_url: str,
        login_url: str,
        test_cmd: Sequence[str] = ("nginx", "-t"),
        reload_cmd: Sequence[str] = ("nginx", "-s", "reload"),
        *,
        addresses: Sequence[str] = ("*", "[::]"),
        acme_dir: str = ACME_DIR,
        hsts: bool = False,
    ) -> None:
        for what, url in (("auth_url", auth_url), ("login_url", login_url)):
            if not _URL.fullmatch(url):
                raise UsageError(
                    f"{what} {url!r} is not a URL nginx can use: write http(s)://host[:port]/path"
                )
        for address in addresses:
            if not _ADDRESS.fullmatch(address):
                raise UsageError(
                    f"{address!r} is not an address to listen on: write *, an IP or [::]"
                )
        if not _FILE.fullmatch(os.path.abspath(acme_dir)):
            raise UsageError(f"{acme_dir!r} cannot be named in nginx's configuration")
        self.sites_dir = os.path.abspath(sites_dir)
        if not _FILE.fullmatch(self.sites_dir):
            raise UsageError(f"{sites_dir!r} cannot be named in nginx's configuration")
        self.auth_url = auth_url
        # nginx keeps connections to an http:// isidorus open (an upstream with keepalive)
        # rather than opening one for each request it checks
        plain = auth_url.startswith("http://")
        self.auth_authority = urlsplit(auth_url).netloc if plain else None
        self.auth_path = (urlsplit(auth_url).path or "/") if plain else ""
        self.login_url = login_url
        self.test_cmd = tuple(test_cmd)
        self.reload_cmd = tuple(reload_cmd)
        self.addresses = tuple(addresses)
        self.acme_dir = os.path.abspath(acme_dir)
        self.hsts = hsts

    # -- the files

    def domain_file(self, domain: str) -> str:
        return os.path.join(self.sites_dir, f"isidorus-{domain}.conf")

    def locations_dir(self, domain: str) -> str:
        # ".d": never matched by the operator's `include SITES_DIR/*.conf`
        return os.path.join(self.sites_dir, f"isidorus-{domain}.d")

    def location_file(self, domain: str, service: str) -> str:
        return os.path.join(self.locations_dir(domain), f"{service}.conf")

    def render(self, site: Site) -> str:
        """The service's location file: its proxy (or its PHP pages through FastCGI), and
        for header SSO its check and its way to the login page. UsageError, before
        anything is written, for a site that cannot be written safely into nginx's
        configuration."""
        check(site)
        header = site.sso_header if site.sso == "header" else None
        sso: list[str] = []
        if header is not None:
            sso = [
                f"    auth_request /_isidorus_auth/{site.service};",
                "    auth_request_set $isidorus_user $upstream_http_x_isidorus_user;",
                f"    error_page 401 = @isidorus_login_{site.service};",
            ]
        cleared = [h for h in IDENTITY_HEADERS if h.lower() != (header or "").lower()]
        if site.sso_header and site.sso_header != header:
            cleared.append(site.sso_header)
        lines = [f"# isidorus-site service={site.service} domain={site.domain} path={site.path}"]
        lines.append("# Written by isidorus at each publish of this service: edits are lost.")
        if site.fastcgi_root is None:
            lines += self._proxy(site, header, sso, cleared)
        else:
            lines += self._fastcgi(site, header, sso, cleared)
        if header is not None:
            allow = ",".join(site.allow)
            sep = "&" if "?" in self.login_url else "?"
            if self.auth_authority is None:
                ask = [f'    proxy_pass "{self.auth_url}";']
            else:
                ask = [
                    f'    proxy_pass "http://{AUTH_UPSTREAM}{self.auth_path}";',
                    "    proxy_http_version 1.1;",
                    '    proxy_set_header Connection "";',
                    f'    proxy_set_header Host "{self.auth_authority}";',
                ]
            lines += [
                f"location = /_isidorus_auth/{site.service} {{",
                "    internal;",
                *ask,
                "    proxy_pass_request_body off;",
                '    proxy_set_header Content-Length "";',
                # the visitor's address, which logins are throttled by
                "    proxy_set_header X-Forwarded-For $remote_addr;",
                # always set, even empty, so a client cannot send its own
                f'    proxy_set_header X-Isidorus-Allow "{allow}";',
                "}",
                f"location @isidorus_login_{site.service} {{",
                *(
                    [
                        # not a browser's plain visit: an app, asked for a name and password
                        "    if ($isidorus_challenge) {",
                        f"        add_header WWW-Authenticate '{_realm(site.domain)}' always;",
                        "        return 401;",
                        "    }",
                    ]
                    if site.basic
                    else []
                ),
                f'    return 302 "{self.login_url}{sep}next=$isidorus_next";',
                "}",
            ]
        return "\n".join(lines) + "\n"

    @staticmethod
    def _proxy(site: Site, header: str | None, sso: list[str], cleared: list[str]) -> list[str]:
        """A site nginx proxies to the service's port."""
        if site.path == "/":
            lines = [
                "location / {",
                # without a URI part: the service gets the request's URI as the client sent it
                f"    proxy_pass http://127.0.0.1:{site.port};",
            ]
            cleared = [*cleared, "X-Script-Name", "X-Forwarded-Prefix"]
        else:
            lines = [
                *_slash_redirect(site.path),
                f"location {site.path}/ {{",
                # with a URI part: the prefix is taken off, and X-Script-Name and
                # X-Forwarded-Prefix tell the service where it lives (Radicale, WSGI's
                # ProxyFix and most apps that run under a prefix read one of them)
                f"    proxy_pass http://127.0.0.1:{site.port}/;",
                f"    proxy_set_header X-Script-Name {site.path};",
                f"    proxy_set_header X-Forwarded-Prefix {site.path};",
            ]
        lines += sso
        if header is not None:
            # replaces whatever the client sent under that name (any case)
            lines.append(f"    proxy_set_header {header} $isidorus_user;")
        # an empty value: nginx passes neither its own nor the client's
        lines += [f'    proxy_set_header {h} "";' for h in _unique(cleared)]
        return [
            *lines,
            "    proxy_http_version 1.1;",
            f"    proxy_set_header Host {site.upstream_host or '$http_host'};",
            "    proxy_set_header X-Real-IP $remote_addr;",
            # nginx is the edge: the address it saw, never a list the client made up
            "    proxy_set_header X-Forwarded-For $remote_addr;",
            "    proxy_set_header X-Forwarded-Proto $scheme;",
            "    proxy_set_header X-Forwarded-Host $http_host;",
            "    proxy_set_header Upgrade $http_upgrade;",
            "    proxy_set_header Connection $isidorus_connection;",
            f"    proxy_read_timeout {READ_TIMEOUT};",
            f"    client_max_body_size {BODY_LIMIT};",
            "}",
        ]

    @staticmethod
    def _fastcgi(site: Site, header: str | None, sso: list[str], cleared: list[str]) -> list[str]:
        """A PHP application: nginx serves its files from its root and hands its .php
        pages to the service's PHP-FPM on its port."""
        assert site.fastcgi_root is not None
        root = site.fastcgi_root.rstrip("/")
        prefix = "" if site.path == "/" else site.path
        if prefix:
            # alias: {path}/x.php is ROOT/x.php, and $request_filename says so in the
            # nested location too
            lines = [*_slash_redirect(prefix), f"location {prefix}/ {{", f'    alias "{root}/";']
        else:
            lines = ["location / {", f'    root "{root}";']
        lines += [f"    index {site.index};", *sso]
        front = f"@isidorus_front_{site.service}"
        if site.front_controller:
            # to a named location, not straight to the index: with alias, nginx's try_files
            # would look for the index as a file under the wrong name
            lines.append(f"    try_files $uri $uri/ {front};")
        lines += [f"    location ^~ {prefix}{d} {{ return 404; }}" for d in site.deny]
        for where, folder in site.aliases:
            # files only: a script there is neither run nor shown
            lines += [
                f"    location ^~ {prefix}{where} {{",
                f'        alias "{folder.rstrip("/")}/";',
                "        location ~ \\.php$ { return 404; }",
                "    }",
            ]
        # nginx hides a client's header from PHP when a parameter of its HTTP_ name is set
        params = [(_cgi(h), '""') for h in _unique([*cleared, "Proxy"])]
        if header is not None:
            params += [(_cgi(header), "$isidorus_user"), ("REMOTE_USER", "$isidorus_user")]
        else:
            params.append(("REMOTE_USER", '""'))
        return [
            *lines,
            "    location ~ \\.php$ {",
            # only the application's own scripts run (not an upload named x.jpg/y.php)
            "        if (!-f $request_filename) { return 404; }",
            f"        fastcgi_pass 127.0.0.1:{site.port};",
            "        include /etc/nginx/fastcgi_params;",
            "        fastcgi_param SCRIPT_FILENAME $request_filename;",
            *[f"        fastcgi_param {name} {value};" for name, value in params],
            f"        fastcgi_read_timeout {READ_TIMEOUT};",
            # an application's headers (cookies, long redirects) and what PHP tells on
            # stderr travel in the first buffer: nginx's 4 KiB are too few for some
            "        fastcgi_buffer_size 32k;",
            "        fastcgi_buffers 16 16k;",
            "    }",
            f"    client_max_body_size {BODY_LIMIT};",
            "}",
            *(
                [f"location {front} {{ rewrite ^ {prefix}/{site.index} last; }}"]
                if site.front_controller
                else []
            ),
        ]

    def render_shared(self) -> str:
        """The shared file: the maps every site uses and, for an http:// auth_url, the
        upstream that keeps nginx's connections to isidorus open between checks."""
        if self.auth_authority is None:
            return SHARED_TEXT
        return SHARED_TEXT + "\n".join(
            [
                "",
                "# isidorus's /auth/check, asked before each request to a service: connections",
                "# are kept (closed by nginx before isidorus's own 5 s keep-alive timeout)",
                f"upstream {AUTH_UPSTREAM} {{",
                f"    server {self.auth_authority};",
                "    keepalive 32;",
                "    keepalive_timeout 4s;",
                "}",
                "",
            ]
        )

    def render_server(self, site: Site) -> str:
        """The domain file the site's domain gets: its server blocks, which include the
        location files of every service on the domain."""
        check(site)
        include = os.path.join(self.locations_dir(site.domain), "*.conf")
        head = [
            f"# The sites isidorus publishes on {site.domain}: rewritten at each publish on",
            "# it, removed with its last service. Each service's locations are in",
            f"# {os.path.basename(self.locations_dir(site.domain))}/.",
        ]
        acme = [
            "    location ^~ /.well-known/acme-challenge/ {",
            f'        alias "{self.acme_dir}/";',
            "    }",
        ]
        served = [
            # a path no service has is not found (and not nginx's welcome page)
            "    root /nonexistent;",
            "    log_not_found off;",
            f'    include "{include}";',
        ]
        http = ["server {", *self._listen(site.listen_http, ""), f"    server_name {site.domain};"]
        if site.tls is None:
            return "\n".join([*head, *http, *acme, *served, "}"]) + "\n"
        port = "" if site.listen_https == 443 else f":{site.listen_https}"
        https = [
            "server {",
            *self._listen(site.listen_https, " ssl"),
            f"    server_name {site.domain};",
            f'    ssl_certificate "{site.tls.cert_file}";',
            f'    ssl_certificate_key "{site.tls.key_file}";',
            "    ssl_protocols TLSv1.2 TLSv1.3;",
        ]
        if self.hsts and not site.tls.self_signed:
            # not includeSubDomains: other hosts of the domain may not have TLS yet
            https.append('    add_header Strict-Transport-Security "max-age=31536000" always;')
        return (
            "\n".join(
                [
                    *head,
                    *http,
                    *acme,
                    "    location / {",
                    f"        return 301 https://$host{port}$request_uri;",
                    "    }",
                    "}",
                    *https,
                    *served,
                    "}",
                ]
            )
            + "\n"
        )

    def _listen(self, port: int, ssl: str) -> list[str]:
        return [f"    listen {a}:{port}{ssl};" for a in self.addresses]

    # -- changing nginx

    def publish(self, site: Site) -> None:
        """Publish the site (or publish it anew, moved or changed), then reload nginx.

        The files are written atomically and `nginx -t` checks the whole configuration;
        when it refuses it, every file is put back as it was and HostError names nginx's
        complaint, so nginx goes on serving what it served. UsageError, before anything is
        written, for a site that cannot be written safely or whose domain and path another
        service has. Safe against other publishes (a lock in SITES_DIR)."""
        check(site)
        files: dict[str, str | None] = {
            os.path.join(self.sites_dir, SHARED): self.render_shared(),
            self.domain_file(site.domain): self.render_server(site),
            self.location_file(site.domain, site.service): self.render(site),
        }
        with self._lock():
            existing = self._scan()
            for other in existing.values():
                if (other.domain, other.path) == (site.domain, site.path) and (
                    other.service != site.service
                ):
                    raise UsageError(
                        f"{site.domain}{site.path} is already {other.service}'s: "
                        "publish on another path or domain"
                    )
            before = existing.get(site.service)
            if before is not None and before.domain != site.domain:  # moved: leave the old
                files[before.file] = None
                if not any(p.domain == before.domain for p in existing.values() if p != before):
                    files[self.domain_file(before.domain)] = None
            self._change(files, f"the site of {site.service}", site.domain)
            if before is not None and before.domain != site.domain:
                with contextlib.suppress(OSError):  # not empty: other services stay there
                    os.rmdir(self.locations_dir(before.domain))

    def unpublish(self, service: str) -> None:
        """Take the service's site away, then reload nginx; nothing to do when it has none.
        HostError when nginx refuses what is left (the site is then put back)."""
        with self._lock():
            existing = self._scan()
            gone = existing.pop(service, None)
            if gone is None:
                return
            files: dict[str, str | None] = {gone.file: None}
            if not any(p.domain == gone.domain for p in existing.values()):
                files[self.domain_file(gone.domain)] = None
            if not existing:
                files[os.path.join(self.sites_dir, SHARED)] = None
            self._change(files, f"the removal of {service}'s site", None)
            with contextlib.suppress(OSError):  # not empty: another site came meanwhile
                os.rmdir(self.locations_dir(gone.domain))

    def published(self) -> list[str]:
        """The services that have a site, by name."""
        return sorted(self._scan())

    def _scan(self) -> dict[str, _Published]:
        found = {}
        pattern = os.path.join(glob.escape(self.sites_dir), "isidorus-*.d", "*.conf")
        for path in sorted(glob.glob(pattern)):
            try:
                with open(path, encoding="utf-8") as f:
                    head = _HEAD.match(f.readline())
            except (OSError, UnicodeDecodeError):
                head = None
            if head is None:  # not ours: the domain file includes it all the same
                continue
            service, domain, where = head.groups()
            found[service] = _Published(service, domain, where, path)
        return found

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        try:
            os.makedirs(self.sites_dir, exist_ok=True)
            fd = os.open(os.path.join(self.sites_dir, ".isidorus.lock"), os.O_RDWR | os.O_CREAT)
        except OSError as exc:
            raise HostError(f"cannot use {self.sites_dir}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _change(self, files: dict[str, str | None], what: str, domain: str | None) -> None:
        """Write (text) or remove (None) the files, test, and put them all back when nginx
        refuses the result; reload when it accepts it."""
        previous: dict[str, bytes | None] = {}
        made: list[str] = []
        try:
            for path, text in files.items():
                previous[path] = _read(path)
                if text is None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                elif previous[path] != text.encode():
                    directory = os.path.dirname(path)
                    if not os.path.isdir(directory):
                        os.makedirs(directory, mode=0o755)
                        made.append(directory)
                    _write(path, text.encode())
            warnings = self._test()
            if domain is not None and f'conflicting server name "{domain}"' in warnings:
                raise _Refused(
                    f"another server block of nginx already answers for {domain}: "
                    "publish on another domain, or take that server block away"
                )
        except _Refused as exc:
            _put_back(previous, made)
            raise HostError(
                f"nginx refused {what} ({exc}); the previous configuration is back"
            ) from None
        except HostError:
            _put_back(previous, made)
            raise
        except OSError as exc:
            _put_back(previous, made)
            raise HostError(
                f"cannot write {exc.filename}: {exc.strerror}; the previous configuration is back"
            ) from None
        run(self.reload_cmd, timeout=TEST_TIMEOUT, what="nginx's reload")

    def _test(self) -> str:
        """Run `nginx -t`; HostError with its complaint when it fails, else its warnings."""
        result = self._run_test(self.test_cmd)
        if result.returncode == 0:
            return result.stderr
        found = _serious(result.stderr + result.stdout)
        if found is None and os.path.basename(self.test_cmd[0]) == "nginx":
            # what nginx finds once it has read `error_log` (a certificate it cannot load…)
            # goes to that log, not to its output: ask again with the log on stderr
            again = self._run_test((*self.test_cmd, "-g", "error_log stderr;"))
            found = _serious(again.stderr + again.stdout)
        raise _Refused(found or complaint(result.stderr + result.stdout))

    def _run_test(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                argv, capture_output=True, text=True, timeout=TEST_TIMEOUT, stdin=subprocess.DEVNULL
            )
        except FileNotFoundError:
            raise HostError(f"{argv[0]} is not installed (needed to test nginx)") from None
        except subprocess.TimeoutExpired:
            raise HostTimeout(f"nginx -t did not finish in {TEST_TIMEOUT:.0f} s") from None


def check(site: Site) -> None:
    """UsageError naming the first field of the site that cannot go into nginx's
    configuration as it is (a quote, a semicolon or a space would change its meaning)."""
    if not _SERVICE.fullmatch(site.service):
        raise UsageError(
            f"{site.service!r} is not a service id: 2 to 31 lowercase letters, digits, -"
        )
    if not _DOMAIN.fullmatch(site.domain):
        raise UsageError(
            f"{site.domain!r} is not a domain name: write it like cal.example.org, in lowercase"
        )
    if not _PATH.fullmatch(site.path):
        raise UsageError(
            f"{site.path!r} is not a path for a site: write / or /name (letters, digits, . _ ~ -)"
        )
    for what, port in (
        ("port", site.port),
        ("listen_http", site.listen_http),
        ("listen_https", site.listen_https),
    ):
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise UsageError(f"{what} {port!r} is not a port: 1 to 65535")
    if site.sso not in SSO_KINDS:
        raise UsageError(f"sso {site.sso!r} is not one of {', '.join(SSO_KINDS)}")
    if site.sso == "header" and not site.sso_header:
        raise UsageError(f"{site.service}: sso header needs the header the service trusts")
    if site.sso_header is not None and (
        not _HEADER.fullmatch(site.sso_header) or site.sso_header.lower() in PROXY_HEADERS
    ):
        raise UsageError(
            f"{site.sso_header!r} cannot carry the user's name: choose a header like X-Remote-User"
        )
    for group in site.allow if site.sso == "header" else ():
        if not _GROUP.fullmatch(group):
            raise UsageError(f"{group!r} is not a group name")
    if site.upstream_host is not None and not _UPSTREAM_HOST.fullmatch(site.upstream_host):
        raise UsageError(f"{site.upstream_host!r} is not a Host to send: write name[:port]")
    if site.fastcgi_root is not None and not _ROOT.fullmatch(site.fastcgi_root):
        raise UsageError(f"{site.fastcgi_root!r} cannot be a site's root: write /a/folder")
    if not _INDEX.fullmatch(site.index):
        raise UsageError(f"{site.index!r} is not an index page: write name.php")
    for folder in site.deny:
        if not _FOLDER.fullmatch(folder):
            raise UsageError(f"{folder!r} is not a folder to deny: write /name/")
    for where, folder in site.aliases:
        if not _FOLDER.fullmatch(where) or not _ROOT.fullmatch(folder):
            raise UsageError(f"{where!r} → {folder!r} is not an alias: write /name/ → /a/folder")
    if site.tls is not None:
        for path in (site.tls.cert_file, site.tls.key_file):
            if not _FILE.fullmatch(path):
                raise UsageError(f"{path!r} cannot be named in nginx's configuration")
        if site.listen_http == site.listen_https:
            raise UsageError(f"listen_http and listen_https are both {site.listen_http}")


def complaint(output: str) -> str:
    """nginx's most telling line: its first [emerg] (or alert, crit), else its last line."""
    lines = [ln.strip().removeprefix("nginx: ") for ln in output.splitlines() if ln.strip()]
    return _serious(output) or (lines[-1] if lines else "nginx -t failed and printed nothing")


def _serious(output: str) -> str | None:
    """The first [emerg], [alert] or [crit] line, without the log's date and process."""
    found = _SERIOUS.search(output)
    return f"[{found[1]}] {found[2].strip()}" if found else None


def _escape_map(source: str, target: str, char: str, escaped: str) -> list[str]:
    """A map that percent-escapes `char` in `source`, for up to ESCAPED_UP_TO occurrences."""
    lines = [f'map "{source}" ${target} {{', f'    default "{source}";']
    for n in range(1, ESCAPED_UP_TO + 1):
        regex = f"^([^{char}]*)" + f"[{char}]([^{char}]*)" * n + "$"
        value = "$1" + "".join(f"{escaped}${i}" for i in range(2, n + 2))
        lines.append(f'    "~{regex}" "{value}";')
    return [*lines, "}"]


def _shared_text() -> str:
    lines = [
        "# Written by isidorus for the sites it publishes (isidorus-*.conf): edits are lost.",
        "",
        "# websockets: Connection follows the client's Upgrade",
        "map $http_upgrade $isidorus_connection {",
        "    default upgrade;",
        '    "" close;',
        "}",
        "",
        "# a request that is not a browser's plain visit (another method, or a name and",
        "# password sent already): sites of apps that sign in by HTTP Basic ask for them",
        'map "$request_method:$http_authorization" $isidorus_challenge {',
        "    default 1;",
        '    "~^(GET|HEAD):$" 0;',
        "}",
        "",
        "# The address a visitor asked for, escaped to travel in the login page's ?next= (nginx",
        "# cannot escape a string itself): % first, then & and +, each up to "
        f"{ESCAPED_UP_TO} times;",
        "# an address with more goes as it is, which still lands on the site.",
    ]
    source = "$scheme://$http_host$request_uri"
    steps = (("%", "%25"), ("&", "%26"), ("+", "%2B"))
    for i, (char, escaped) in enumerate(steps):
        target = "isidorus_next" if i == len(steps) - 1 else f"isidorus_next_{i}"
        lines += _escape_map(source, target, char, escaped)
        source = f"${target}"
    return "\n".join(lines) + "\n"


SHARED_TEXT = _shared_text()


def _realm(domain: str) -> str:
    return f'Basic realm="{domain}", charset="UTF-8"'


def _slash_redirect(path: str) -> list[str]:
    """/prefix goes to /prefix/, where the service's locations are."""
    return [f"location = {path} {{", f"    return 301 {path}/$is_args$args;", "}"]


def _cgi(header: str) -> str:
    """The FastCGI parameter a request header travels in: X-Remote-User: HTTP_X_REMOTE_USER."""
    return "HTTP_" + header.upper().replace("-", "_")


def _unique(names: list[str]) -> list[str]:
    """The names without repeats; header names are the same in any case."""
    out: list[str] = []
    for name in names:
        if name.lower() not in {o.lower() for o in out}:
            out.append(name)
    return out


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def _write(path: str, data: bytes) -> None:
    """Replace `path` atomically (a hidden temporary name no `*.conf` include matches)."""
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.")
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _put_back(previous: dict[str, bytes | None], made: list[str]) -> None:
    for path, data in previous.items():
        if data is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        elif _read(path) != data:
            _write(path, data)
    for directory in reversed(made):
        with contextlib.suppress(OSError):
            os.rmdir(directory)
