"""`augur pretrain --data DIR --out DIR`."""

from __future__ import annotations

from pathlib import Path

import click

from ...core.commands import echo_result
from ...core.settings import click_options, from_cli
from .config import PretrainConfig


@click.command("pretrain")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output folder (the backbone).")
@click_options(PretrainConfig)
def pretrain_cmd(out, **kw):
    """Stage 3: train a backbone on synthetic images; keep the backbone, drop the head (Premonition)."""
    from .stage import pretrain

    echo_result(pretrain(from_cli(PretrainConfig, kw), out))
