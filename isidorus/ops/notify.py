"""Telling the host's admin: e-mail, Matrix, XMPP, ntfy, Gotify… through apprise, one URL
per target (`[notify] urls`, see https://github.com/caronc/apprise/wiki).

After each night: a message when a step failed, or when `doctor` finds something serious
in what it watches over time (disk, certificates, backups, remotes, services); with
`digest = true`, a report of every night. Sending never fails the night: a target that
cannot be reached is logged in the run and named by `isidorus notify test`.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from isidorus import settings
from isidorus.errors import UsageError
from isidorus.ops import jobs_config
from isidorus.ops.database import read_config
from isidorus.ops.doctor import Finding
from isidorus.ops.runs import Run, Step
from isidorus.units import human_bytes

# the findings told after a night: what changes over time, not the host's set-up
WATCHED = ("disk", "certificate", "backup", "remote", "service")


def _serious(f: Finding) -> bool:
    if f.check == "clock":  # a host without NTP is told by doctor, a clock gone back here
        return f.severity == "critical"
    return f.check in WATCHED and f.severity in ("warning", "critical")


@dataclass(frozen=True)
class Message:
    title: str
    body: str
    failure: bool  # a failure (sent as such), or a report


class NoTargets(UsageError):
    """No notification target is configured: nothing to send to, as things stand."""

    http_status = 409


@dataclass(frozen=True)
class TestSent:
    targets: int  # how many targets were sent the message
    failed: tuple[str, ...]  # those that did not take it (secrets masked)

    def to_json(self) -> dict[str, Any]:
        return {"targets": self.targets, "failed": list(self.failed)}


def host_name(data_dir: str) -> str:
    """The host as messages name it: its domain, else the machine's name."""
    return str(read_config(data_dir).get("domain") or socket.getfqdn())


def send_test(data_dir: str) -> TestSent:
    """Send a test message to every target of the configuration file's `[notify] urls`
    (`isidorus notify test`); a target that fails is named in the answer, not raised.
    NoTargets when there is none; UsageError for a broken file or a URL apprise cannot
    use."""
    _conf, jobs, _remotes = jobs_config.host_config()
    urls = jobs.notify.urls
    if not urls:
        raise NoTargets(
            f"no notification target: add urls under [notify] in {settings.config_path()}"
        )
    host = host_name(data_dir)
    message = Message(
        f"[{host}] isidorus test message", f"isidorus on {host} can reach you.", failure=False
    )
    return TestSent(len(urls), tuple(send(urls, message)))


def _apprise(urls: Sequence[str]) -> object:
    import apprise  # loaded only to send

    sender = apprise.Apprise()
    for url in urls:
        if not sender.add(url):
            raise UsageError(
                f"{_masked(url)} is not a notification URL apprise knows: see "
                "https://github.com/caronc/apprise/wiki for the forms of each service"
            )
    return sender


def check_urls(urls: Sequence[str]) -> None:
    """UsageError naming the first URL apprise cannot use."""
    _apprise(urls)


def send(urls: Sequence[str], message: Message) -> list[str]:
    """Send `message` to each target; the targets that failed (their URLs with secrets
    masked), [] when all took it."""
    import apprise

    sender = _apprise(urls)
    assert isinstance(sender, apprise.Apprise)
    kind = apprise.NotifyType.FAILURE if message.failure else apprise.NotifyType.INFO
    failed = []
    for target in sender:
        if not target.notify(body=message.body, title=message.title, notify_type=kind):
            failed.append(str(target.url(privacy=True)))  # type: ignore[no-untyped-call]
    return failed


def night_message(
    run: Run, findings: Sequence[Finding], host: str, *, digest: bool
) -> Message | None:
    """The message after a night: None when there is nothing to tell (and no digest)."""
    failed = [s for s in run.steps if s.status == "failed"]
    serious = [f for f in findings if _serious(f)]
    if not failed and not serious and not digest:
        return None
    lines = []
    if failed:
        lines.append(f"The nightly job of {host} (run {run.id}) failed at {len(failed)} step(s):")
        lines += [f"- {s.step} {s.target}: {s.error}".replace("  ", " ") for s in failed]
        lines.append("")
    if serious:
        lines.append("What needs you:")
        lines += [
            f"- [{f.severity}] {f.message}" + (f": {f.fix}" if f.fix else "") for f in serious
        ]
        lines.append("")
    if digest:
        lines.append(
            f"Run {run.id}: {run.status}, {len(run.steps)} steps, {human_bytes(run.bytes)} new."
        )
        lines += [
            f"- {s.step} {s.target}: {s.status}, {s.seconds:.0f} s, {human_bytes(s.bytes)}".replace(
                "  ", " "
            )
            for s in run.steps
        ]
    lines.append(f"`isidorus jobs {run.id}` on {host} shows the whole log.")
    bad = bool(failed) or any(f.severity == "critical" for f in serious)
    if failed:
        title = f"[{host}] nightly job failed: {', '.join(_names(failed))}"
    elif serious:
        title = f"[{host}] {serious[0].message}" + (
            f" (and {len(serious) - 1} more)" if len(serious) > 1 else ""
        )
    else:
        title = f"[{host}] nightly job ok"
    return Message(title, "\n".join(lines), failure=bad or bool(serious))


def _names(failed: Sequence[Step]) -> list[str]:
    return [f"{s.step} {s.target}".strip() for s in failed]


def _masked(url: str) -> str:
    scheme, _, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return f"{scheme}://{rest}"
