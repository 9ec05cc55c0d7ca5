"""`augur curate RENDER_DIR --out DIR`."""

from __future__ import annotations

from pathlib import Path

import click

from ...core.commands import echo_result
from ...core.settings import click_options, from_cli
from .config import CurateConfig


@click.command("curate")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Output folder: the kept images (DomainBed layout, hard links), scores, measures, dataset card.")
@click_options(CurateConfig)
def curate(source, out, **kw) -> None:
    """Stage 3: score, filter and de-duplicate the images of a render folder SOURCE; the kept ones train."""
    from .stage import run_curate

    echo_result(run_curate(source, out, from_cli(CurateConfig, kw)))
