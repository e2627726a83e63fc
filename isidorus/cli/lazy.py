"""Command groups whose commands are imported only when named (click's documented pattern),
so a home's forced command or a nightly backup does not load the web and database
libraries it never uses."""

from __future__ import annotations

import importlib

import click


class LazyGroup(click.Group):
    """`lazy` maps a command's name to "module:attribute"."""

    def __init__(self, *args: object, lazy: dict[str, str], **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        spec = self.lazy.get(cmd_name)
        if spec is None:
            return super().get_command(ctx, cmd_name)
        module, _, attr = spec.partition(":")
        command = getattr(importlib.import_module(module), attr)
        if not isinstance(command, click.Command):
            raise TypeError(f"{spec} is not a click command")
        return command
