"""What every stage's command shares: a group whose default subcommand needs no name, how a StageResult
is printed, and the training command of a stage with typed variants (`augur dg`, `augur cl`: --out, --list
and one listing of their hyper-parameters).

Each stage's command lives in its folder (stages/<name>/command.py); cli.py adds them to `augur`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import click

from .errors import UsageError
from .settings import HP, click_options, from_cli


class DefaultGroup(click.Group):
    """`augur render PROMPTS ...` runs the default subcommand; `augur render merge DIR` the named one."""

    default = ""

    def parse_args(self, ctx, args):
        if not args or args[0] not in self.commands:
            args = [self.default, *args]
        return super().parse_args(ctx, args)

    def format_usage(self, ctx, formatter):
        formatter.write_usage(ctx.command_path, f"[{self.default} options] | {' | '.join(self.commands)} ...")


def default_group(default: str) -> type[DefaultGroup]:
    return type(f"DefaultGroup_{default}", (DefaultGroup,), {"default": default})


def echo_result(result) -> None:
    """A StageResult (core/stagerun.py) on the terminal: warnings on stderr, then tables, then the lines."""
    if not result.printed:
        return
    for w in result.warnings:
        click.echo(f"warning: {w}", err=True)
    for t in result.tables:
        click.echo(t)
    for line in result.lines:
        click.echo(line)


def hparam_lines(entries: dict[str, dict[str, HP]], about: dict[str, str] | None = None,
                 none: str = "no hyper-parameters", indent: str = "") -> list[str]:
    """One line per variant: `name: key: type = default, range, ... -- what it is`."""
    lines = []
    for name, declared in entries.items():
        params = ", ".join(f"{k}: {v.describe()}" for k, v in declared.items()) or none
        tail = f" -- {about[name]}" if about and about.get(name) else ""
        lines.append(f"{indent}{name}: {params}{tail}")
    return lines


def train_command(group: click.Group, settings: type, *, out_help: str, variants: str,
                  listing: Callable[[], list[str]]) -> Callable:
    """Decorator: `fn(settings, out)` as `group`'s `train` subcommand, with `--out`, the settings' options and
    `--list` (print `listing()`, the `variants` and their hyper-parameters, then exit); `--out` is needed only
    when there is work. The function's docstring is the command's help."""
    def wrap(fn: Callable[[Any, Path], None]) -> click.Command:
        @click.option("--out", type=click.Path(path_type=Path), help=out_help)
        @click.option("--list", "list_", is_flag=True,
                      help=f"Print the {variants} and their hyper-parameters, then exit.")
        @click_options(settings)
        def train(out, list_, **kw):
            if list_:
                click.echo("\n".join(listing()))
                return
            if out is None:
                raise UsageError("Missing option '--out'.")
            fn(from_cli(settings, kw), out)

        return group.command("train", help=fn.__doc__)(train)
    return wrap
