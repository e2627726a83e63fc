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


def sync_destination(args: list[str]) -> str | None:
    """DEST of `backup sync SOURCE DEST [options]`; None for any other command line."""
    if args[:2] != ["backup", "sync"]:
        return None
    positional: list[str] = []
    rest = iter(args[2:])
    for arg in rest:
        if arg == "--":
            positional.extend(rest)
            break
        name, eq, _value = arg.partition("=")
        if name in _VALUED:
            if not eq and next(rest, None) is None:
                return None
        elif arg in _FLAGS:
            continue
        elif arg.startswith("-") and arg != "-":
            return None
        else:
            positional.append(arg)
    return positional[1] if len(positional) == 2 else None


def reach_home(args: list[str]) -> None:
    """Start ssh to the home a sync is for; the sync's connection takes it over."""
    dest = sync_destination(args)
    if dest is None:
        return
    try:
        from isidorus import settings
        from isidorus.ops import stores

        if dest.startswith("remote:"):
            from isidorus.ops import remotes

            dest = remotes.resolve(dest, settings.load_remotes(settings.config_path()))
        stores.connect_ahead(dest, settings.load())
    except Exception:  # noqa: BLE001 - the command line meets it again and says it
        return
