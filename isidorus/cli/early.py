"""`isidorus backup sync SOURCE DEST` to a home (`ssh+isidorus://`, or a remote naming one)
starts ssh before the command line itself is loaded: the handshake and the home's start-up
then overlap the loading of click and of the engine instead of following it, a tenth of a
second of every sync that the home's link would otherwise idle for.

Only a command line that is plainly such a sync is recognised here, with this module's few
imports; anything else, or any doubt (an option not known here, `--help`, a setting that
does not load), leaves everything to the command line, which meets the same problem and
says it in its own words.
"""

from __future__ import annotations

_VALUED = frozenset({"--snapshot", "--passphrase-file", "--limit-rate"})
_FLAGS = frozenset({"--json"})


def sync_destination(args: list[str]) -> tuple[str, str | None] | None:
    """DEST and the --limit-rate of `backup sync SOURCE DEST [options]`; None for any other
    command line."""
    if args[:2] != ["backup", "sync"]:
        return None
    positional: list[str] = []
    rate = None
    rest = iter(args[2:])
    for arg in rest:
        if arg == "--":
            positional.extend(rest)
            break
        name, eq, value = arg.partition("=")
        if name in _VALUED:
            if not eq:
                following = next(rest, None)
                if following is None:
                    return None
                value = following
            if name == "--limit-rate":
                rate = value
        elif arg in _FLAGS:
            continue
        elif arg.startswith("-") and arg != "-":
            return None
        else:
            positional.append(arg)
    return (positional[1], rate) if len(positional) == 2 else None


def reach_home(args: list[str]) -> None:
    """Start connecting to the home a sync is for, leaving the connection to
    `stores.connect_early`, which the sync command asks."""
    found = sync_destination(args)
    if found is None:
        return
    dest, rate = found
    try:
        from isidorus import settings
        from isidorus.ops import stores
        from isidorus.units import parse_size

        if dest.startswith("remote:"):
            from isidorus.ops import remotes

            dest = remotes.resolve(dest, settings.load_remotes(settings.config_path()))
        if not dest.startswith("ssh+isidorus://"):
            return
        conf = settings.load()
        if rate is not None:
            parse_size(rate, "rate")
            conf["limit_rate"] = rate
        stores.connect_ahead(dest, conf)
    except Exception:  # noqa: BLE001 - the command line meets it again and says it
        return
