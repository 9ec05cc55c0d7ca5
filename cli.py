"""The `augur` command: one thin Click command per pipeline stage over plain functions in toolkit/."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from toolkit import __version__
from toolkit.errors import AugurError


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


class AugurGroup(click.Group):
    """Turns AugurError into a one-line message and a non-zero exit; bugs keep their traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except AugurError as e:
            _fail(str(e))
        except KeyboardInterrupt:
            _fail("interrupted; run the same command again to resume from the cache", 130)


@click.group(cls=AugurGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="augur")
def main() -> None:
    """Augur: turn an LLM's imagination into training data, offline."""


# ---------------------------------------------------------------- models
@main.group()
def models() -> None:
    """The model registry: list, verify, import, pull."""


@models.command("list")
def models_list() -> None:
    """Every model card and whether its local copy is present and verified."""
    from toolkit.models import status_rows

    rows = status_rows()
    cols = ("name", "kind", "state", "prompting", "source", "license")
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    click.echo("  ".join(c.upper().ljust(widths[c]) for c in cols))
    for r in rows:
        click.echo("  ".join(str(r[c]).ljust(widths[c]) for c in cols).rstrip())


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
@click.option("--kind", help="Model kind, needed when NAME has no card (gguf, diffusers, onnx, embedding).")
@click.option("--prompting", type=click.Choice(["base", "chat"]), help="For a new GGUF card: base or chat prompting.")
def models_import(name: str, path: Path, kind: str | None, prompting: str | None) -> None:
    """Register a file or folder copied in by hand (the offline workflow)."""
    from toolkit.models import import_model

    card, digest = import_model(name, path, kind, prompting)
    click.echo(f"{card.name}: imported {path} ({card.kind}), sha256 {digest}")


@models.command("pull")
@click.argument("name")
def models_pull(name: str) -> None:
    """Fetch NAME: assemble an embedded model, or download from the hub where one is reachable."""
    from toolkit.models import get_card, pull, verify

    card = get_card(name)
    path = pull(card)
    click.echo(f"{name}: {path} (sha256 {verify(card, path, use_record=False)})")


# ---------------------------------------------------------------- extrapolate
def _llm_options(f):
    options = [
        click.option("--model", default="gemma3-270m-q4km", show_default=True,
                     help="A model card name (augur models list) or a path to a .gguf file."),
        click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Output folder."),
        click.option("--seed", default=0, show_default=True, type=int),
        click.option("--prompting", type=click.Choice(["auto", "base", "chat"]), default="auto", show_default=True,
                     help="Few-shot completion (base models) or chat template (instruct models)."),
        click.option("--temperature", default=0.8, show_default=True, type=float),
        click.option("--max-attempts", default=4, show_default=True, type=int,
                     help="LLM requests per item before it is recorded as partial or failed."),
        click.option("--semantic-dedup/--no-semantic-dedup", default=True, show_default=True,
                     help="Drop near-duplicates by all-MiniLM-L6-v2 similarity."),
        click.option("--semantic-threshold", default=0.8, show_default=True, type=float),
        click.option("--threads", type=int, help="CPU threads for llama.cpp (default: all cores)."),
        click.option("--gpu-layers", default=-1, show_default=True, type=int,
                     help="Layers offloaded to the GPU in a CUDA build of llama.cpp (-1: all)."),
        click.option("--force", is_flag=True, help="Replace existing outputs in --out."),
        click.option("--quiet", is_flag=True, help="No progress bar."),
    ]
    for opt in reversed(options):
        f = opt(f)
    return f


def _config(model, seed, prompting, temperature, max_attempts, semantic_dedup, semantic_threshold, threads,
            gpu_layers, quiet):
    from toolkit.extrapolate import ExtrapolateConfig
    from toolkit.llm import Sampling

    return ExtrapolateConfig(model=model, seed=seed, prompting=None if prompting == "auto" else prompting,
                             sampling=Sampling(temperature=temperature), max_attempts=max_attempts,
                             semantic_dedup=semantic_dedup, semantic_threshold=semantic_threshold,
                             threads=threads, gpu_layers=gpu_layers, progress=not quiet)


@main.group()
def extrapolate() -> None:
    """Stage 1: the LLM imagines domains (per class) or classes (per realm)."""


@extrapolate.command("domains")
@click.option("--classes", help="Comma-separated class names; 'crane (bird)' picks a sense.")
@click.option("--classes-file", type=click.Path(path_type=Path), help="One class per line (or commas).")
@click.option("--dataset", type=click.Path(path_type=Path), help="A DomainBed-layout folder ROOT/<domain>/<class>/.")
@click.option("--domains-per-class", "-n", default=8, show_default=True, type=int)
@click.option("--exclude-domains", default="", help="The dataset's own domains, e.g. art_painting,cartoon,photo,sketch.")
@_llm_options
def extrapolate_domains_cmd(classes, classes_file, dataset, domains_per_class, exclude_domains, out, force, **kw):
    """Novel domains per class → OUT/prompts.jsonl (Beyond Finite Data)."""
    from toolkit import classnames
    from toolkit.extrapolate import extrapolate_domains

    names = classnames.collect(classes, classes_file, dataset)
    exclude = [e for e in exclude_domains.split(",") if e.strip()]
    if dataset and not exclude:
        exclude = classnames.dataset_domains(dataset)
    run = extrapolate_domains(names, domains_per_class, out, exclude_domains=exclude, cfg=_config(**kw), force=force)
    _report(run, "class")


@extrapolate.command("realm")
@click.argument("realm")
@click.option("--groups", default=6, show_default=True, type=int, help="Sub-groups to predict.")
@click.option("--classes-per-group", default=8, show_default=True, type=int)
@_llm_options
def extrapolate_realm_cmd(realm, groups, classes_per_group, out, force, **kw):
    """Related classes of a REALM with visual descriptions → OUT/classes.jsonl, prompts.jsonl (Premonition)."""
    from toolkit.extrapolate import extrapolate_realm

    run = extrapolate_realm(realm, out, groups=groups, classes_per_group=classes_per_group, cfg=_config(**kw),
                            force=force)
    _report(run, "group")


def _report(run: dict, unit: str) -> None:
    items = run.get("classes") or run.get("per_group") or []
    for it in items:
        if it["status"] != "ok":
            click.echo(f"warning: {unit} '{it.get('class') or it.get('group')}' is {it['status']}: "
                       f"{it['kept']}/{it['wanted']} after {it['attempts']} attempts "
                       f"(rejected: {it['rejected'] or 'none'})", err=True)
    click.echo(run["summary"]["line"])


# ---------------------------------------------------------------- render
class DefaultCommandGroup(AugurGroup):
    """`augur render PROMPTS ...` runs the default subcommand; `augur render merge DIR` the named one."""

    default = "images"

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = [self.default, *args]
        return super().parse_args(ctx, args)


@main.group(cls=DefaultCommandGroup)
def render() -> None:
    """Stage 2: prompts → images in the DomainBed layout (augur render PROMPTS.jsonl --out DIR)."""


@render.command("images")
@click.argument("prompts", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output folder (DomainBed layout).")
@click.option("--model", default="tiny-lcm", show_default=True, help="A diffusers/onnx card, or a pipeline folder.")
@click.option("--backend", default="torch", show_default=True, help="torch or onnx.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--dtype", default="auto", show_default=True, help="auto (fp16 on CUDA, fp32 on CPU), fp32, fp16, bf16.")
@click.option("--steps", type=int, help="Denoising steps (default: the card's).")
@click.option("--guidance", type=float, help="Guidance scale (default: the card's).")
@click.option("--size", type=int, help="Image side in pixels (default: the card's).")
@click.option("--batch-size", default=4, show_default=True, type=int)
@click.option("--images-per-prompt", default=1, show_default=True, type=int)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--shard", help="i/n: render only this shard of the images (merge with `augur render merge`).")
@click.option("--negative-prompt", help="For pipelines that take one (not LCM).")
@click.option("--attention-slicing", is_flag=True, help="Less memory, a little slower (torch).")
@click.option("--vae-slicing", is_flag=True, help="Decode images one by one (torch).")
@click.option("--tiny-vae", help="An AutoencoderTiny card or folder (e.g. taesd) for faster decoding (torch).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def render_images(prompts, out, shard, quiet, **kw) -> None:
    """Render every row of PROMPTS (a prompts.jsonl) into OUT; re-run the same command to resume."""
    from toolkit import distributed
    from toolkit.render import RenderConfig, merge, parse_shard, render as render_run

    shard_t = parse_shard(shard)
    state = distributed.state() if shard is None else None  # under `accelerate launch`: a shard per process
    if state is not None:
        shard_t = (state.process_index, state.num_processes)
    cfg = RenderConfig(shard=shard_t, progress=not quiet and (state is None or state.is_main_process), **kw)
    result = render_run(prompts, out, cfg)
    click.echo(result["line"])
    if state is not None:
        # Every process has finished its shard once all reach the barrier; one of them merges.
        state.wait_for_everyone()
        if state.is_main_process:
            click.echo(merge(out)["line"])


@render.command("merge")
@click.argument("out", type=click.Path(path_type=Path))
def render_merge(out) -> None:
    """Merge the shard manifests of OUT into OUT/manifest.jsonl (and draw its contact sheet)."""
    from toolkit.render import merge

    click.echo(merge(out)["line"])


# ---------------------------------------------------------------- pretrain and dg
def _train_options(f):
    options = [
        click.option("--backbone", default="resnet18", show_default=True, help="resnet18, resnet50 or vit_small."),
        click.option("--epochs", default=5, show_default=True, type=int),
        click.option("--batch-size", default=64, show_default=True, type=int),
        click.option("--lr", default=1e-3, show_default=True, type=float),
        click.option("--image-size", default=32, show_default=True, type=int),
        click.option("--lora/--full", default=False, show_default=True,
                     help="Train LoRA adapters (peft) or fine-tune every weight."),
        click.option("--lora-rank", default=8, show_default=True, type=int),
        click.option("--precision", default="auto", show_default=True,
                     help="fp32, bf16 or fp16 (mixed precision); auto: bf16/fp16 on CUDA, fp32 on CPU."),
        click.option("--quiet", is_flag=True, help="No progress bar."),
    ]
    for opt in reversed(options):
        f = opt(f)
    return f


def _train_config(epochs, batch_size, lr, image_size, lora, lora_rank, precision, quiet, seed=0):
    from toolkit.train import TrainConfig

    return TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, image_size=image_size, lora=lora,
                       lora_rank=lora_rank, precision=precision, seed=seed, progress=not quiet)


@main.command("pretrain")
@click.option("--data", "source", required=True, help="'digits', or a DomainBed-layout folder (e.g. a render output).")
@click.option("--out", required=True, type=click.Path(path_type=Path))
@click.option("--weights", type=click.Path(path_type=Path), help="Start from local weights (.safetensors).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--force", is_flag=True, help="Replace an existing backbone in --out.")
@_train_options
def pretrain_cmd(source, out, weights, seed, force, backbone, **kw):
    """Stage 3: train a backbone on synthetic images; keep the backbone, drop the head (Premonition)."""
    from toolkit.pretrain import pretrain
    from toolkit.distributed import is_main_process

    card = pretrain(source, out, backbone=backbone, weights=weights, cfg=_train_config(seed=seed, **kw), force=force)
    if is_main_process():
        click.echo(card["line"])


@main.command("dg")
@click.option("--data", "source", default="digits", show_default=True,
              help="'digits' (RotatedDigits) or a DomainBed-layout folder.")
@click.option("--out", required=True, type=click.Path(path_type=Path))
@click.option("--synthetic", type=click.Path(path_type=Path), help="Rendered domains to add to training.")
@click.option("--single-source", help="Train on this one real domain (+ synthetic), test on the others.")
@click.option("--data-free", is_flag=True, help="Train on --synthetic alone, test on every real domain.")
@click.option("--test-domains", help="Comma-separated; default: every real domain in turn.")
@click.option("--weights", type=click.Path(path_type=Path), help="A backbone from `augur pretrain` (folder or .safetensors).")
@click.option("--algorithm", default="ERM", show_default=True)
@click.option("--seeds", default="0", show_default=True, help="Comma-separated trial seeds.")
@click.option("--holdout", default=0.2, show_default=True, type=float, help="Validation share of each training domain.")
@_train_options
def dg_cmd(source, out, synthetic, single_source, data_free, test_domains, weights, algorithm, seeds, holdout,
           backbone, **kw):
    """Stage 4: leave-one-domain-out DG (DomainBed protocol); re-run the same command to resume."""
    from toolkit.dg import DGConfig, run_dg
    from toolkit.distributed import is_main_process

    try:
        seed_list = tuple(int(s) for s in seeds.split(",") if s.strip())
    except ValueError:
        raise AugurError(f"--seeds must be comma-separated integers, got '{seeds}'") from None
    cfg = DGConfig(algorithm=algorithm, backbone=backbone, weights=weights, synthetic=synthetic,
                   single_source=single_source, data_free=data_free,
                   test_domains=[t.strip() for t in test_domains.split(",")] if test_domains else None,
                   seeds=seed_list, holdout=holdout, train=_train_config(**kw))
    res = run_dg(source, out, cfg)
    if is_main_process():
        click.echo(res["table"])
        click.echo(f"dg: {len(res['rows'])} result rows → {res['results']}")


@main.command("cl")
@click.option("--data", "source", default="digits", show_default=True,
              help="'digits' (SplitDigits) or a DomainBed-layout folder (domains pooled).")
@click.option("--out", required=True, type=click.Path(path_type=Path))
@click.option("--strategy", default="naive", show_default=True,
              help="naive, replay, lwf, ewc, icarl or prototype.")
@click.option("--backbone", "weights", default="none", show_default=True,
              help="'none' (random init) or a backbone folder from `augur pretrain` (Premonition).")
@click.option("--arch", default="resnet18", show_default=True, help="Backbone architecture.")
@click.option("--initial-classes", default=2, show_default=True, type=int)
@click.option("--increment", default=2, show_default=True, type=int)
@click.option("--epochs", default=2, show_default=True, type=int)
@click.option("--batch-size", default=64, show_default=True, type=int)
@click.option("--lr", default=1e-3, show_default=True, type=float)
@click.option("--image-size", default=16, show_default=True, type=int)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--hp", multiple=True, help="A strategy hyper-parameter, e.g. --hp memory=500 --hp selection=herding.")
@click.option("--quiet", is_flag=True)
def cl_cmd(source, out, strategy, weights, arch, hp, quiet, **kw):
    """Stage 5: class-incremental learning; re-run the same command to resume at the task it was on."""
    from toolkit.cl import CLConfig, run_cl, table

    hparams = {}
    for item in hp:
        key, sep, value = item.partition("=")
        if not sep:
            raise AugurError(f"--hp takes key=value, got '{item}'")
        hparams[key.strip()] = yaml_scalar(value)
    cfg = CLConfig(strategy=strategy, backbone=arch, weights=None if weights == "none" else Path(weights),
                   hparams=hparams, progress=not quiet, **kw)
    res = run_cl(source, out, cfg)
    click.echo(table([res]))
    click.echo(f"cl: accuracy matrix → {Path(out) / 'accuracy_matrix.png'}, results → {Path(out) / 'results.jsonl'}")


def yaml_scalar(text: str):
    import yaml

    return yaml.safe_load(text)


# ---------------------------------------------------------------- recipes and reports
@main.command("run")
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Run folder (stage folders go inside).")
@click.option("--dry-run", is_flag=True, help="Print the plan and what is already cached; run nothing.")
@click.option("--quiet", is_flag=True)
def run_cmd(recipe, out, dry_run, quiet):
    """Run a YAML RECIPE's stages in order; only what changed is redone, a killed run resumes."""
    from toolkit.recipe import run_recipe

    steps = run_recipe(recipe, out, dry_run=dry_run, progress=not quiet)
    for s in steps:
        state = "cached" if s["cached"] else ("to run" if dry_run else "done")
        click.echo(f"{s['stage']:<12} {state:<7} {s['folder']}")


@main.command("report")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), help="Report folder (default: RUN_DIR/report).")
@click.option("--title", default="Augur run", show_default=True)
def report_cmd(run_dir, out, title):
    """Write RUN_DIR's report as Markdown and self-contained HTML."""
    from toolkit.report import write_report

    paths = write_report(run_dir, out, title)
    click.echo(f"report: {paths['markdown']} and {paths['html']}")


@models.command("export-onnx")
@click.argument("name")
@click.option("--quantize", type=click.Choice(["int8", "int8-conv"]),
              help="Also make a copy with a dynamically quantized UNet: int8 (attention and feed-forward "
                   "weights; closest to fp32) or int8-conv (convolutions too; fastest on CPU).")
@click.option("--parity-size", type=int, help="Image size for the parity check (default: the card's).")
def models_export_onnx(name, quantize, parity_size) -> None:
    """Export diffusers model NAME to ONNX with optimum, register it as NAME-onnx, report parity."""
    from toolkit.onnx_export import export_onnx

    for target, info in export_onnx(name, quantize, parity_size).items():
        click.echo(f"{target}: {info['path']} (sha256 {info['sha256'][:12]}…), parity vs torch fp32: "
                   f"max pixel difference {info['parity_max_pixel_diff']:.0f}/255")


if __name__ == "__main__":
    main()
