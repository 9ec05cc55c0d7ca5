"""`augur dg --data DIR --out DIR` (train), `augur dg collect DIR...`, `augur dg --list`."""

from __future__ import annotations

from pathlib import Path

import click

from ...core.commands import default_group, echo_result, hparam_lines, train_command
from .config import DGConfig


@click.group(cls=default_group("train"))
def dg() -> None:
    """Stage 4: domain generalization, DomainBed's protocol (augur dg --data DIR --out DIR; augur dg collect DIR...)."""


def list_lines() -> list[str]:
    from .hparams import ALGORITHM_HPARAMS, HPARAM_CLASSES, SWAD_HPARAMS, declared

    lines = hparam_lines(ALGORITHM_HPARAMS, none="no own hyper-parameters")
    lines.append("every algorithm, by hyper-parameter class (picked from --weights and the data's image size):")
    for hclass, about in HPARAM_CLASSES.items():
        shared = {k: v for k, v in declared("DANN", hclass, hclass == "resnet").items()
                  if k not in ALGORITHM_HPARAMS["DANN"]}
        (line,) = hparam_lines({f"{hclass} ({about})": shared}, indent="  ")
        lines.append(line + " (lr_g, lr_d, weight_decay_g: DANN and CDANN only; freeze_bn follows the weights)")
    lines.extend(hparam_lines({"with --swad": SWAD_HPARAMS}))
    return lines


@train_command(dg, DGConfig, out_help="Output folder (results.jsonl, runs/).", variants="algorithms",
               listing=list_lines)
def dg_train(cfg: DGConfig, out: Path) -> None:
    """Train and evaluate a sweep; re-run the same command to resume, or with more seeds to extend it."""
    from .stage import run_dg

    echo_result(run_dg(cfg, out))


@dg.command("collect")
@click.argument("dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--latex", is_flag=True, help="LaTeX tables (default: Markdown).")
@click.option("--compare", type=click.Choice(["synthetic"]), default=None,
              help="Then the paired difference between arms (with vs without synthetic data): mean, 95% bootstrap "
                   "interval, permutation p-value, per algorithm and test domain.")
@click.option("--baseline", default=None, metavar="ARM",
              help="The arm the others are compared with (default: none, the runs without synthetic data).")
def dg_collect(dirs, latex, compare, baseline):
    """DomainBed's collect_results tables from one or more `augur dg` folders."""
    from ...core.errors import UsageError
    from .collect import collect

    if baseline and not compare:
        raise UsageError("--baseline needs --compare synthetic")
    click.echo(collect(list(dirs), "latex" if latex else "markdown", compare, baseline))
