"""`augur render PROMPTS --out DIR` (and `augur render merge DIR`)."""

from __future__ import annotations

from pathlib import Path

import click

from ...core.commands import default_group, echo_result
from ...core.settings import click_options, from_cli
from .config import RenderConfig


@click.group(cls=default_group("images"))
def render() -> None:
    """Stage 2: prompts → images in the DomainBed layout (augur render PROMPTS.jsonl --out DIR)."""


@render.command("images")
@click.argument("prompts", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output folder (DomainBed layout).")
@click_options(RenderConfig)
def render_images(prompts, out, **kw) -> None:
    """Render every row of PROMPTS (a prompts.jsonl) into OUT; re-run the same command to resume."""
    from .stage import render_stage

    echo_result(render_stage(prompts, out, from_cli(RenderConfig, kw)))


@render.command("merge")
@click.argument("out", type=click.Path(path_type=Path))
def render_merge(out) -> None:
    """Merge the shard manifests of OUT into OUT/manifest.jsonl (and draw its contact sheet)."""
    from .stage import merge

    click.echo(merge(out)["line"])
