"""`isidorus serve`: the web server (public page, portal, single sign-on for nginx)."""

from __future__ import annotations

import os
from typing import Any

import click

from isidorus.cli.accounts import _data_dir
from isidorus.errors import UsageError
from isidorus.ops import accounts as ops


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--listen {value!r} is not HOST:PORT, e.g. 127.0.0.1:8080")
    return host.strip("[]") or "127.0.0.1", int(port)


@click.command()
@click.option(
    "--data-dir",
    metavar="DIR",
    help="The host's data directory (default: ISIDORUS_HOME, else /var/lib/isidorus as root).",
)
@click.option(
    "--listen",
    default="127.0.0.1:8080",
    show_default=True,
    metavar="HOST:PORT",
    help="Where to listen (nginx proxies to it).",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    metavar="N",
    help="Server processes (default: one per CPU).",
)
@click.option(
    "--cpu-affinity/--no-cpu-affinity",
    default=None,
    help="Keep each process to a CPU of its own (default: the serve_cpu_affinity setting).",
)
@click.option(
    "--scheduler",
    is_flag=True,
    help="Also run the nightly job at [nightly] time (hosts without systemd's timer).",
)
def serve(
    data_dir: str | None,
    listen: str,
    workers: int | None,
    cpu_affinity: bool | None,
    scheduler: bool,
) -> None:
    """Run the web server; a host not yet initialised is set up first. With --scheduler
    it also runs the nightly job every night, as `isidorus schedule run` does."""
    import uvicorn  # only this command needs the server

    from isidorus.web.app import DATA_DIR_VARIABLE, create_app, settle

    addr, port = _listen(listen)
    d = _data_dir(data_dir)
    r = ops.init_host(d, domain="localhost", admin="admin", email="admin@localhost")
    if r.created and r.password:
        click.echo(
            f"initialised {d}\nadmin: {r.admin}\npassword: {r.password} "
            "(shown once: change it in the portal)"
        )
    # built here first, so that a bad config or database stops the start with one line
    app = create_app(d)
    if scheduler:
        _start_scheduler(d)
    workers = workers or os.cpu_count() or 1
    click.echo(
        f"isidorus listens on http://{addr}:{port}/ with {workers} "
        f"process{'es' if workers > 1 else ''} (Ctrl-C stops it)"
    )
    options: dict[str, Any] = dict(
        host=addr,
        port=port,
        log_level="warning",
        proxy_headers=True,
        server_header=False,
        # nginx's /auth/check is answered before the app; the rest goes to uvicorn's own
        http="isidorus.web.fast_path:FastPath",
    )
    if workers == 1:
        settle()
        uvicorn.run(app, **options)
        return
    # every process builds its own app; they share the state database (sessions, login
    # throttling, pending logins) and nothing else
    app.state.db.close()
    os.environ[DATA_DIR_VARIABLE] = d
    from isidorus.web import workers as processes

    if cpu_affinity is None:
        from isidorus import settings

        cpu_affinity = bool(settings.load()["serve_cpu_affinity"])
    status = processes.run(workers, addr, port, options, pin=cpu_affinity)
    if status:
        raise SystemExit(status)


def _start_scheduler(data_dir: str) -> None:
    """The nightly job's scheduler in a thread of this (the first) process: the workers
    only answer requests."""
    import threading

    from isidorus import settings
    from isidorus.ops import jobs_config, schedule

    path = settings.config_path()
    jobs_config.load(path)  # a broken configuration stops the start, in one line
    db = ops.open_state(data_dir, warn=lambda line: click.echo(line, err=True))

    def say(line: str) -> None:
        click.echo(f"scheduler: {line}", err=True)

    def loop() -> None:
        schedule.serve(db, data_dir, lambda: jobs_config.load(path).nightly, say)

    threading.Thread(target=loop, name="isidorus-scheduler", daemon=True).start()
