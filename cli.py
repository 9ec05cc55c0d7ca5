"""The `augur` command: one thin Click command per pipeline stage over the stage functions in toolkit/.

Every stage's options are generated from its settings dataclass (toolkit/core/settings.py), so the
command, the recipe schema and the validation cannot disagree. Errors follow one policy
(toolkit/core/errors.py): usage errors exit 2 with one line, user and environment errors exit 1 with
one line; only bugs show a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from toolkit import __version__
from toolkit.core.errors import EXIT_INTERRUPTED, EXIT_USAGE, AugurError, UsageError, environment_message
from toolkit.core.settings import click_options, from_cli


def _fail(message: str, code: int) -> None:
    click.echo(f"Error: {' '.join(str(message).split())}", err=True)
    sys.exit(code)


class AugurGroup(click.Group):
    """Turns user errors into one line and an exit status; bugs keep their traceback."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.Exit as e:
            sys.exit(e.exit_code)
        except (click.exceptions.Abort, KeyboardInterrupt):
            _fail("interrupted; run the same command again to resume", EXIT_INTERRUPTED)
        except click.UsageError as e:
            _fail(e.format_message(), EXIT_USAGE)
        except click.ClickException as e:
            _fail(e.format_message(), e.exit_code)
        except AugurError as e:
            _fail(str(e), e.exit_code)
        except OSError as e:
            message = environment_message(e)
            if message is None:
                raise
            _fail(message, 1)
        except RuntimeError as e:
            if type(e).__name__ != "OutOfMemoryError":  # torch.cuda.OutOfMemoryError, without importing torch
                raise
            _fail(gpu_out_of_memory(), 1)
        if standalone_mode:
            sys.exit(0)
        return rv


def gpu_out_of_memory() -> str:
    """The one line for a CUDA out-of-memory error outside rendering (which names its own levers)."""
    import torch

    try:
        free, total = torch.cuda.mem_get_info()
        memory = f"{total / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free"
    except Exception:  # noqa: BLE001 - only for the message
        memory = "unknown"
    return (f"CUDA ran out of memory (GPU memory {memory}); try a smaller --batch-size or --image-size, "
            "--precision bf16 or fp16, or --lora; a re-run resumes from the last checkpoint")


class DefaultGroup(AugurGroup):
    """`augur render PROMPTS ...` runs the default subcommand; `augur render merge DIR` the named one."""

    default = "images"

    def parse_args(self, ctx, args):
        if not args or args[0] not in self.commands:
            args = [self.default, *args]
        return super().parse_args(ctx, args)

    def format_usage(self, ctx, formatter):
        formatter.write_usage(ctx.command_path, f"[{self.default} options] | {' | '.join(self.commands)} ...")


@click.group(cls=AugurGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="augur")
def main() -> None:
    """Augur: turn an LLM's imagination into training data, offline."""


def hp_option(f):
    return click.option("--hp", "hp", multiple=True, metavar="KEY=VALUE",
                        help="A hyper-parameter, checked against its declared type and range (repeatable).")(f)


# ---------------------------------------------------------------- models
@main.group()
def models() -> None:
    """The model registry: list, verify, import, pull, export-onnx."""


@models.command("list")
def models_list() -> None:
    """Every model card and whether its local copy is present and verified."""
    from toolkit.core.tables import format_table
    from toolkit.models import status_rows

    rows = status_rows()
    cols = ("name", "kind", "state", "prompting", "source", "license")
    click.echo(format_table([c.upper() for c in cols], [[r[c] for c in cols] for r in rows]))


@models.command("verify")
@click.argument("name")
def models_verify(name: str) -> None:
    """Check the local copy of NAME against its card's sha256."""
    from toolkit.models import get_card, local_path, verify

    card = get_card(name)
    digest = verify(card)
    click.echo(f"{name}: verified sha256 {digest} at {local_path(card)}")


@models.command("import")
@click.argument("name")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--kind", help="Model kind, needed when NAME has no card (gguf, diffusers, onnx, embedding, lora, "
                             "autoencoder-tiny, backbone).")
@click.option("--prompting", type=click.Choice(["base", "chat"]), help="For a new GGUF card: base or chat prompting.")
def models_import(name: str, path: Path, kind: str | None, prompting: str | None) -> None:
    """Register a file or folder copied in by hand (the offline workflow)."""
    from toolkit.models import import_model

    card, digest = import_model(name, path, kind, prompting)
    click.echo(f"{card.name}: imported {path} ({card.kind}), sha256 {digest}")


@models.command("pull")
@click.argument("name")
@click.option("--tiny", is_flag=True, help="Build a random-weight stand-in with the real folder's structure, "
                                           "registered as NAME-tiny (no download).")
def models_pull(name: str, tiny: bool) -> None:
    """Fetch NAME: assemble an embedded model, or download its minimal file set where the hub is reachable."""
    from toolkit.models import get_card, pull, verify

    card = get_card(name)
    if tiny:
        from toolkit.models.tiny import pull_tiny

        tiny_card, path, digest = pull_tiny(card)
        click.echo(f"{tiny_card.name}: {path} (sha256 {digest}); {tiny_card.description}")
        return
    path = pull(card)
    click.echo(f"{name}: {path} (sha256 {verify(card, path, use_record=False)})")


@models.command("export-onnx")
@click.argument("name")
@click.option("--quantize", type=click.Choice(["int8", "int8-conv"]),
              help="Also make a copy with a dynamically quantized UNet: int8 (attention and feed-forward "
                   "weights; closest to fp32) or int8-conv (convolutions too; fastest on CPU).")
@click.option("--parity-size", type=click.IntRange(8, 4096), help="Image size for the parity check (default: the card's).")
def models_export_onnx(name, quantize, parity_size) -> None:
    """Export diffusers model NAME, as its card defines it, to ONNX; register NAME-onnx; report parity."""
    from toolkit.models.onnx_export import export_onnx

    for target, info in export_onnx(name, quantize, parity_size).items():
        click.echo(f"{target}: {info['path']} (sha256 {info['sha256'][:12]}…), parity vs torch fp32: "
                   f"max pixel difference {info['parity_max_pixel_diff']:.0f}/255")


# ---------------------------------------------------------------- extrapolate
from toolkit.stages.extrapolate.config import DomainsConfig, RealmConfig  # noqa: E402


@main.group()
def extrapolate() -> None:
    """Stage 1: the LLM imagines domains (per class) or classes (per realm), or imports the paper's prompts."""


def _report(run: dict, unit: str) -> None:
    items = run.get("classes") or run.get("per_group") or []
    for it in items:
        if it["status"] != "ok":
            click.echo(f"warning: {unit} '{it.get('class') or it.get('group')}' is {it['status']}: "
                       f"{it['kept']}/{it['wanted']} after {it['attempts']} attempts "
                       f"(rejected: {it['rejected'] or 'none'})", err=True)
    click.echo(run["summary"]["line"])


@extrapolate.command("domains")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click_options(DomainsConfig)
def extrapolate_domains_cmd(out, **kw):
    """Novel domains per class → OUT/prompts.jsonl (Beyond Finite Data)."""
    from toolkit.stages.extrapolate.stage import extrapolate_domains

    _report(extrapolate_domains(from_cli(DomainsConfig, kw), out), "class")


@extrapolate.command("realm")
@click.argument("realm")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click_options(RealmConfig)
def extrapolate_realm_cmd(realm, out, **kw):
    """Related classes of a REALM with visual descriptions → OUT/classes.jsonl, prompts.jsonl (Premonition)."""
    from toolkit.stages.extrapolate.stage import extrapolate_realm

    _report(extrapolate_realm(from_cli(RealmConfig, kw, realm=realm), out), "group")


@extrapolate.command("import")
@click.argument("csv_file", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--realm", help="The realm the file describes (default: from its file name).")
@click.option("--force", is_flag=True, help="Replace an earlier import in --out.")
def extrapolate_import_cmd(csv_file, out, realm, force):
    """Read a Premonition prompt CSV (the paper's own) into OUT/classes.jsonl + prompts.jsonl."""
    from toolkit.stages.extrapolate.importer import import_csv

    click.echo(import_csv(csv_file, out, realm=realm, force=force)["summary"]["line"])


# ---------------------------------------------------------------- render
from toolkit.stages.render.config import RenderConfig  # noqa: E402


@main.group(cls=DefaultGroup)
def render() -> None:
    """Stage 2: prompts → images in the DomainBed layout (augur render PROMPTS.jsonl --out DIR)."""


@render.command("images")
@click.argument("prompts", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output folder (DomainBed layout).")
@click_options(RenderConfig)
def render_images(prompts, out, **kw) -> None:
    """Render every row of PROMPTS (a prompts.jsonl) into OUT; re-run the same command to resume."""
    import dataclasses

    from toolkit.core import distributed
    from toolkit.stages.render.stage import merge, render as render_run

    cfg = from_cli(RenderConfig, kw)
    state = distributed.state() if cfg.shard is None else None  # under `accelerate launch`: a shard per process
    if state is not None:
        cfg = dataclasses.replace(cfg, shard=f"{state.process_index}/{state.num_processes}",
                                  quiet=cfg.quiet or not state.is_main_process)
    click.echo(render_run(prompts, out, cfg)["line"])
    if state is not None:
        # Every process has finished its shard once all reach the barrier; one of them merges.
        state.wait_for_everyone()
        if state.is_main_process:
            click.echo(merge(out)["line"])


@render.command("merge")
@click.argument("out", type=click.Path(path_type=Path))
def render_merge(out) -> None:
    """Merge the shard manifests of OUT into OUT/manifest.jsonl (and draw its contact sheet)."""
    from toolkit.stages.render.stage import merge

    click.echo(merge(out)["line"])


# ---------------------------------------------------------------- pretrain
from toolkit.stages.pretrain.config import PretrainConfig  # noqa: E402


@main.command("pretrain")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output folder (the backbone).")
@click_options(PretrainConfig)
def pretrain_cmd(out, **kw):
    """Stage 3: train a backbone on synthetic images; keep the backbone, drop the head (Premonition)."""
    from toolkit.core.distributed import is_main_process
    from toolkit.stages.pretrain.stage import pretrain

    card = pretrain(from_cli(PretrainConfig, kw), out)
    if is_main_process():
        click.echo(card["line"])


# ---------------------------------------------------------------- dg
from toolkit.stages.dg.config import DGConfig  # noqa: E402


class TrainGroup(DefaultGroup):
    default = "train"


@main.group(cls=TrainGroup)
def dg() -> None:
    """Stage 4: domain generalization, DomainBed's protocol (augur dg --data DIR --out DIR; augur dg collect DIR...)."""


@dg.command("train")
@click.option("--out", type=click.Path(path_type=Path), help="Output folder (results.jsonl, runs/).")
@click.option("--list", "list_", is_flag=True, help="Print the algorithms and their hyper-parameters, then exit.")
@hp_option
@click_options(DGConfig)
def dg_cmd(out, list_, hp, **kw):
    """Train and evaluate a sweep; re-run the same command to resume, or with more seeds to extend it."""
    if list_:
        from toolkit.stages.dg.hparams import ALGORITHM_HPARAMS, HPARAM_CLASSES, SWAD_HPARAMS, declared

        for name in ALGORITHM_HPARAMS:
            own = ", ".join(f"{k}: {v.describe()}" for k, v in ALGORITHM_HPARAMS[name].items()) or "no own hyper-parameters"
            click.echo(f"{name}: {own}")
        click.echo("every algorithm, by hyper-parameter class (picked from --weights and the data's image size):")
        for hclass, about in HPARAM_CLASSES.items():
            pretrained = hclass == "resnet"
            shared = {k: v for k, v in declared("DANN", hclass, pretrained).items() if k not in ALGORITHM_HPARAMS["DANN"]}
            click.echo(f"  {hclass} ({about}): " + ", ".join(f"{k}: {v.describe()}" for k, v in shared.items())
                       + " (lr_g, lr_d, weight_decay_g: DANN and CDANN only; freeze_bn follows the weights)")
        click.echo("with --swad: " + ", ".join(f"{k}: {v.describe()}" for k, v in SWAD_HPARAMS.items()))
        return
    if out is None:
        raise UsageError("Missing option '--out'.")
    from toolkit.core.distributed import is_main_process
    from toolkit.core.settings import parse_hparams
    from toolkit.stages.dg.hparams import declared
    from toolkit.stages.dg.stage import run_dg

    cfg = from_cli(DGConfig, kw)
    # Names, types and ranges are the same in every hyper-parameter class; the class (and so the defaults)
    # is resolved by the stage once it has read the data.
    cfg.hp = parse_hparams(hp, declared(cfg.algorithm, "resnet", cfg.weights != "none", cfg.swad), cfg.algorithm)
    res = run_dg(cfg, out)
    if is_main_process():
        click.echo(res["table"])
        click.echo(f"dg: {len(res['rows'])} result rows → {res['results']}")


@dg.command("collect")
@click.argument("dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--latex", is_flag=True, help="LaTeX tables (default: Markdown).")
def dg_collect(dirs, latex):
    """DomainBed's collect_results tables from one or more `augur dg` folders."""
    from toolkit.stages.dg.collect import collect

    click.echo(collect(list(dirs), "latex" if latex else "markdown"))


# ---------------------------------------------------------------- cl
from toolkit.stages.cl.config import CLConfig  # noqa: E402


@main.group(cls=TrainGroup)
def cl() -> None:
    """Stage 5: class-incremental learning (augur cl --strategy NAME --out DIR; augur cl collect DIR...)."""


@cl.command("train")
@click.option("--out", type=click.Path(path_type=Path), help="Output folder (results.jsonl, accuracy_matrix.png).")
@click.option("--list", "list_", is_flag=True, help="Print the strategies and their hyper-parameters, then exit.")
@hp_option
@click_options(CLConfig)
def cl_cmd(out, list_, hp, **kw):
    """Train through the tasks; re-run the same command to resume at the task it was on."""
    from toolkit.stages.cl.strategies import STRATEGIES

    if list_:
        for name, cls in STRATEGIES.items():
            params = ", ".join(f"{k}: {v.describe()}" for k, v in cls.hparams.items()) or "no hyper-parameters"
            click.echo(f"{name}: {params} -- {cls.about}")
        return
    if out is None:
        raise UsageError("Missing option '--out'.")
    from toolkit.core.settings import parse_hparams
    from toolkit.stages.cl.stage import run_cl, table

    cfg = from_cli(CLConfig, kw)
    cfg.hp = parse_hparams(hp, STRATEGIES.get(cfg.strategy).hparams, f"strategy '{cfg.strategy}'")
    res = run_cl(cfg, out)
    click.echo(table([res]))
    click.echo(f"cl: {res['protocol']} → {Path(out) / 'results.jsonl'}, {Path(out) / 'accuracy_matrix.png'}")


@cl.command("collect")
@click.argument("dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--latex", is_flag=True, help="A LaTeX table (default: Markdown).")
def cl_collect(dirs, latex):
    """One table from the final rows of every results.jsonl under DIRS: mean ± std over class orders."""
    from toolkit.stages.cl.stage import collect

    click.echo(collect(list(dirs), "latex" if latex else "markdown"))


# ---------------------------------------------------------------- recipes and reports
@main.command("run")
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Run folder (stage folders go inside).")
@click.option("--dry-run", is_flag=True, help="Print the plan and what is already cached; run nothing.")
@click.option("--smoke", is_flag=True, help="Every model replaced by its tiny stand-in, every data path by a small "
                                            "built-in dataset, counts cut down: the whole recipe in minutes on a CPU.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def run_cmd(recipe, out, dry_run, smoke, quiet):
    """Run a YAML RECIPE's stages in order; only what changed is redone, a killed run resumes."""
    from toolkit.run.recipe import run_recipe

    steps = run_recipe(recipe, out, dry_run=dry_run, progress=not quiet, smoke=smoke)
    for s in steps:
        state = "cached" if s["cached"] else ("to run" if dry_run else "done")
        click.echo(f"{s['stage']:<12} {state:<7} {s['folder']}")


@main.command("report")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), help="Report folder (default: FOLDER/report).")
@click.option("--title", default="Augur run", show_default=True)
def report_cmd(folder, out, title):
    """Write FOLDER's report (any stage output or run folder) as Markdown and self-contained HTML."""
    from toolkit.run.report import write_report

    paths = write_report(folder, out, title)
    click.echo(f"report: {paths['markdown']} and {paths['html']}")


if __name__ == "__main__":
    main()
