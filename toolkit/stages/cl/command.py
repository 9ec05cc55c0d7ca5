"""`augur cl --strategy NAME --out DIR` (train), `augur cl collect DIR...`, `augur cl --list`."""

from __future__ import annotations

from pathlib import Path

import click

from ...core.commands import default_group, echo_result, hparam_lines, train_command
from .config import CLConfig


@click.group(cls=default_group("train"))
def cl() -> None:
    """Stage 5: class-incremental learning (augur cl --strategy NAME --out DIR; augur cl collect DIR...)."""


def list_lines() -> list[str]:
    from .hparams import STRATEGY_HPARAMS
    from .strategies import STRATEGIES

    return hparam_lines(STRATEGY_HPARAMS, {name: cls.about for name, cls in STRATEGIES.items()})


@train_command(cl, CLConfig, out_help="Output folder (results.jsonl, accuracy_matrix.png).", variants="strategies",
               listing=list_lines)
def cl_train(cfg: CLConfig, out: Path) -> None:
    """Train through the tasks; re-run the same command to resume at the task it was on."""
    from .stage import run_cl

    echo_result(run_cl(cfg, out))


@cl.command("collect")
@click.argument("dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--latex", is_flag=True, help="A LaTeX table (default: Markdown).")
@click.option("--compare", type=click.Choice(["weights"]), default=None,
              help="Then the paired difference between weights (e.g. a pretrained backbone vs ImageNet): mean, 95% "
                   "bootstrap interval, permutation p-value, over class orders and seeds.")
@click.option("--baseline", default=None, metavar="ARM",
              help="The weights the others are compared with, as the table names them (default: ImageNet, else "
                   "random).")
def cl_collect(dirs, latex, compare, baseline):
    """One table from the final rows of every results.jsonl under DIRS: mean ± std over class orders."""
    from ...core.errors import UsageError
    from .stage import collect

    if baseline and not compare:
        raise UsageError("--baseline needs --compare weights")
    click.echo(collect(list(dirs), "latex" if latex else "markdown", compare, baseline))
