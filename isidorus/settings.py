"""Every setting isidorus reads, with its default and help, and where values come from.

Later sources override earlier ones: the defaults below, /etc/isidorus/isidorus.toml,
/etc/isidorus/isidorus.toml.d/*.toml (in name order), ISIDORUS_<NAME> environment
variables, then command-line flags (applied by the frontends). Core code never reads
settings: it is handed values.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, NamedTuple

from isidorus.errors import UsageError

# NamedTuples rather than dataclasses, and tomllib only once a file is there: this module
# is read before a sync to a home starts ssh (cli/early.py), where milliseconds count


class Setting(NamedTuple):
    name: str
    default: Any
    help: str
    env: str = ""  # the environment variable, when not ISIDORUS_<NAME>

    @property
    def env_name(self) -> str:
        return self.env or "ISIDORUS_" + self.name.upper()


def _default_cache() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "isidorus")


def _default_data_dir() -> str:
    if os.geteuid() == 0:
        return "/var/lib/isidorus"
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share"
    )
    return os.path.join(base, "isidorus")


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "data_dir",
        _default_data_dir(),
        "Where the host's configuration and state database live.",
        env="ISIDORUS_HOME",
    ),
    Setting(
        "cache_dir",
        _default_cache(),
        "Where the local index caches of stores, and what each off-site copy held after its "
        "last sync, are kept (safe to delete).",
    ),
    Setting("backup_threads", 0, "Worker threads for backup and restore; 0 means one per core."),
    Setting(
        "services_dir",
        "/etc/isidorus/services.d",
        "The operator's own service manifests, added to the catalog (an id that is already "
        "in the catalog replaces the built-in service).",
    ),
    Setting(
        "ssh_command",
        "ssh",
        "The ssh client and options used for ssh:// and ssh+isidorus:// stores, e.g. "
        "`ssh -F /etc/isidorus/ssh_config`; your ~/.ssh/config, agent and known_hosts apply.",
    ),
    Setting(
        "remote_isidorus",
        "isidorus",
        "The isidorus command on the host of an ssh+isidorus:// store, when no forced command "
        "of its authorized_keys runs it anyway.",
    ),
    Setting(
        "limit_rate",
        "",
        "The most that copies to ssh:// and ssh+isidorus:// stores send a second, e.g. 2M "
        "(bytes, powers of 1024); empty: no limit. `sync --limit-rate` overrides it.",
    ),
    Setting(
        "s3_endpoint",
        "",
        "The S3 server of s3:// stores, e.g. https://s3.example.org; empty: AWS_ENDPOINT_URL_S3, "
        "AWS_ENDPOINT_URL or the AWS config file, else Amazon's.",
    ),
    Setting("s3_region", "", "The S3 region; empty: AWS_REGION or the AWS config file."),
    Setting(
        "s3_addressing_style",
        "auto",
        "Where S3 requests put the bucket: auto (in the path for a named endpoint, in the host "
        "name for Amazon's), path or virtual.",
    ),
    Setting(
        "s3_credentials_file",
        "",
        "An AWS credentials file for s3:// stores; empty: AWS_* variables and ~/.aws/credentials.",
    ),
    Setting(
        "service_data_root",
        "/var/lib/isidorus/services",
        "Where installed services keep their data: one directory per service.",
    ),
    Setting(
        "service_config_root",
        "/etc/isidorus/services",
        "Where installed services' configuration files are written: one directory each.",
    ),
    Setting(
        "nginx_sites_dir",
        "/etc/nginx/isidorus",
        "Where isidorus writes the nginx sites of the services; nginx includes "
        "NGINX_SITES_DIR/*.conf inside http {}.",
    ),
    Setting("nginx_test_command", "nginx -t", "How isidorus checks nginx's configuration."),
    Setting("nginx_reload_command", "nginx -s reload", "How isidorus makes nginx reload it."),
    Setting(
        "nginx_listen",
        "* [::]",
        "The addresses the services' sites listen on, separated by spaces.",
    ),
    Setting("services_http_port", 80, "The port of the services' sites over http."),
    Setting("services_https_port", 443, "The port of the services' sites over https."),
    Setting(
        "services_tls",
        "self-signed",
        "Certificates of the services' sites: self-signed, acme (from an ACME CA such as "
        "Let's Encrypt, renewed before they end), or none (plain http, for a host used only "
        "on a local network).",
    ),
    Setting("tls_dir", "/etc/isidorus/tls", "Where the services' certificates and keys are kept."),
    Setting(
        "acme_directory",
        "https://acme-v02.api.letsencrypt.org/directory",
        "The ACME CA's directory URL, for services_tls = acme (default: Let's Encrypt's).",
    ),
    Setting(
        "acme_email",
        "",
        "The email address of the host's account at the ACME CA; required for services_tls = acme.",
    ),
    Setting(
        "acme_ca_bundle",
        "",
        "A PEM file of the CA certificates that the ACME CA's own TLS certificate is checked "
        "against (a private CA); empty: the system's.",
    ),
    Setting(
        "serve_cpu_affinity",
        True,
        "`isidorus serve` keeps each of its processes to a CPU of its own when it runs one per "
        "CPU or more (steadier latency); false lets the kernel move them.",
    ),
    Setting(
        "services_auth_url",
        "http://127.0.0.1:8080/auth/check",
        "Where nginx asks isidorus about each request to a service (isidorus serve's /auth/check).",
    ),
    Setting(
        "services_login_url",
        "",
        "Where a visitor who is not logged in is sent; empty: https://DOMAIN/login, DOMAIN "
        "being the host's.",
    ),
    Setting(
        "systemd_unit_dir",
        "/etc/systemd/system",
        "Where services' systemd units are written, on hosts where systemd is PID 1.",
    ),
    Setting(
        "supervisor_config",
        "/etc/supervisor/supervisord.conf",
        "The supervisord configuration that supervisorctl is given, on hosts without systemd.",
    ),
    Setting(
        "supervisor_conf_dir",
        "/etc/supervisor/conf.d",
        "Where services' supervisord programs are written; supervisor_config must include it.",
    ),
    Setting(
        "backup_store",
        "/var/backups/isidorus/store",
        "The host's own store (a directory), where `service backup` and `service upgrade` "
        "keep each service's snapshots; made at first use.",
    ),
    Setting(
        "backup_passphrase_file",
        "/etc/isidorus/backup.passphrase",
        "The file holding the passphrase of backup_store (root's, mode 0600); keep a copy "
        "away from this host.",
    ),
    Setting(
        "apt_config",
        "",
        "An apt configuration file that `isidorus update` runs apt with (apt's APT_CONFIG), "
        "e.g. to take upgrades from other sources or lists; empty: apt's own configuration.",
    ),
    Setting(
        "service_log_dir",
        "/var/log/isidorus",
        "Where supervisord writes each service's output (NAME.log); systemd uses its journal.",
    ),
)

CONFIG_FILE = "/etc/isidorus/isidorus.toml"
REMOTES_FILE = "remotes.toml"  # in the .d folder: written by `isidorus backup remote`


def config_path(environ: Mapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    return env.get("ISIDORUS_CONFIG", CONFIG_FILE)


def remotes_path(config_file: str) -> str:
    return os.path.join(config_file + ".d", REMOTES_FILE)


def documents(path: str) -> list[tuple[str, dict[str, Any]]]:
    """The configuration file and its .d/*.toml, in the order they apply."""
    try:
        parts = sorted(
            e.path for e in os.scandir(path + ".d") if e.name.endswith(".toml") and e.name[0] != "."
        )
    except (FileNotFoundError, NotADirectoryError):
        parts = []
    except OSError as exc:
        raise UsageError(f"cannot read the configuration folder {path}.d: {exc}") from None
    docs = []
    for f in [path, *parts]:
        try:
            fh = open(f, "rb")  # noqa: SIM115 - closed below, once tomllib is loaded
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise UsageError(f"cannot read the configuration {f}: {exc}") from None
        import tomllib  # only once a file is there

        with fh:
            try:
                docs.append((f, tomllib.load(fh)))
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise UsageError(f"cannot read the configuration {f}: {exc}") from None
    return docs


def load(
    config_file: str | None = None, environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    env = os.environ if environ is None else environ
    path = config_file or config_path(env)
    values = {s.name: s.default for s in SETTINGS}
    for f, doc in documents(path):
        for k, v in doc.items():
            if k in values:
                if isinstance(values[k], bool) and not isinstance(v, bool):
                    raise UsageError(f"{k} in {f} is {v!r}: write true or false (no quotes)")
                values[k] = v
    for s in SETTINGS:
        raw = env.get(s.env_name)
        if raw is not None:
            try:
                values[s.name] = _from_environment(s.default, raw)
            except ValueError:
                raise UsageError(
                    f"ISIDORUS_{s.name.upper()}={raw!r} is not a valid {type(s.default).__name__}"
                ) from None
    return values


_BOOLEANS = dict.fromkeys(("1", "true", "yes", "on"), True) | dict.fromkeys(
    ("0", "false", "no", "off"), False
)


def _from_environment(default: Any, raw: str) -> Any:
    if isinstance(default, bool):
        word = raw.strip().lower()
        if word not in _BOOLEANS:
            raise ValueError(raw)
        return _BOOLEANS[word]
    return type(default)(raw)


class Remote(NamedTuple):
    """A named place for a store: `[remotes.NAME]` with `url` in a configuration file."""

    name: str
    url: str
    file: str  # where it is defined


def load_remotes(config_file: str) -> dict[str, Remote]:
    """The remotes of the configuration file and its .d/*.toml (a later file's
    definition of a name wins)."""
    remotes: dict[str, Remote] = {}
    for f, doc in documents(config_file):
        table = doc.get("remotes", {})
        if not isinstance(table, dict):
            raise UsageError(f'`remotes` in {f} must be a table: [remotes.NAME] with url = "…"')
        for name, entry in table.items():
            url = entry.get("url") if isinstance(entry, dict) else None
            if not isinstance(url, str):
                raise UsageError(f'[remotes.{name}] in {f} needs url = "…" (a string)')
            remotes[name] = Remote(name, url, f)
    return remotes
