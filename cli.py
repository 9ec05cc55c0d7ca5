"""The `augur` command: the model registry, `augur run RECIPE`, and every pipeline stage's command.

Each stage brings its own command (toolkit/stages/<name>/command.py, listed in toolkit/stages/__init__.py),
its options generated from its settings dataclass (toolkit/core/settings.py), so the
command, the recipe schema and the validation cannot disagree. Errors follow one policy
(toolkit/core/errors.py): usage errors exit 2 with one line, user and environment errors exit 1 with
one line; only bugs show a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from toolkit import __version__
from toolkit.core.errors import EXIT_INTERRUPTED, EXIT_USAGE, AugurError, environment_message
from toolkit.core.settings import click_options
from toolkit.models.render_defaults import RenderDefaults


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


@click.group(cls=AugurGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="augur")
def main() -> None:
    """Augur: turn an LLM's imagination into training data, offline."""


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
    """Check the local copy of NAME against its card's sha256 (an embedded model is assembled first)."""
    from toolkit.models.store import ensure

    _, path, digest = ensure(name)
    click.echo(f"{name}: verified sha256 {digest} at {path}")


@models.command("import")
@click.argument("name")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--kind", help="Model kind, needed when NAME has no card (gguf, diffusers, onnx, embedding, lora, "
                             "autoencoder-tiny, backbone).")
@click.option("--prompting", type=click.Choice(["base", "chat"]), help="For a new GGUF card: base or chat prompting.")
@click_options(RenderDefaults)
def models_import(name: str, path: Path, kind: str | None, prompting: str | None, **render) -> None:
    """Register a file or folder copied in by hand (the offline workflow). A diffusion pipeline may be given
    its render defaults; without them it renders with its pipeline class's own (recorded in every image's
    row)."""
    from toolkit.core.settings import from_cli
    from toolkit.models import import_model

    given = from_cli(RenderDefaults, render).given()
    card, digest = import_model(name, path, kind, prompting, given or None)
    said = f"; render defaults {', '.join(f'{k} {v}' for k, v in given.items())}" if given else ""
    click.echo(f"{card.name}: imported {path} ({card.kind}), sha256 {digest}{said}")


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
    # a local build (embedded, built-in) is pinned anew; a download must match what was first recorded
    click.echo(f"{name}: {path} (sha256 {verify(card, path, use_record=False, repin='hub' not in card.source)})")


@models.command("export-onnx")
@click.argument("name")
@click.option("--quantize", type=click.Choice(["int8", "int8-conv"]),
              help="Also make a copy with a dynamically quantized UNet: int8 (attention and feed-forward "
                   "weights; closest to fp32) or int8-conv (convolutions too; fastest on CPU).")
@click.option("--parity-size", type=click.IntRange(8, 4096), help="Image size for the parity check (default: the card's).")
def models_export_onnx(name, quantize, parity_size) -> None:
    """Export diffusers model NAME, as its card defines it, to ONNX; register NAME-onnx; report parity."""
    from toolkit.stages.render.onnx_export import export_onnx

    for target, info in export_onnx(name, quantize, parity_size).items():
        click.echo(f"{target}: {info['path']} (sha256 {info['sha256'][:12]}…), parity vs torch fp32: "
                   f"max pixel difference {info['parity_max_pixel_diff']:.0f}/255")


# ---------------------------------------------------------------- datasets
@main.group()
def data() -> None:
    """Datasets: convert official releases to the DomainBed layout the stages read."""


@data.command("convert")
@click.argument("dataset", type=click.Choice(["cub", "cars"]))
@click.argument("src", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="The folder to write: OUT/train/<class>/, "
                                                                           "OUT/test/<class>/, OUT/convert.json.")
@click.option("--link", type=click.Choice(["copy", "hardlink", "symlink"]), default="copy", show_default=True,
              help="How images are placed (a hard link across filesystems is a copy, and recorded as one).")
@click.option("--force", is_flag=True, help="Replace an earlier conversion in --out.")
def data_convert(dataset: str, src: Path, out: Path, link: str, force: bool) -> None:
    """SRC as its archive unpacks (CUB_200_2011/, or Stanford Cars' folder with devkit/) -> OUT, split by the
    dataset's own split files."""
    from toolkit.datasets.convert import convert

    r = convert(dataset, src, out, link, force)
    click.echo(f"data convert {dataset}: {r['images']['train']} train and {r['images']['test']} test images of "
               f"{r['classes']} classes → {out} ({', '.join(f'{n} {k}' for k, n in sorted(r['placed'].items()))})")


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
    from toolkit.core.commands import echo_result
    from toolkit.core.distributed import is_main_process
    from toolkit.run.recipe import run_recipe

    steps = run_recipe(recipe, out, dry_run=dry_run, progress=not quiet, smoke=smoke,
                       on_result=lambda stage, result: echo_result(result))
    for s in steps if is_main_process() else []:
        state = "cached" if s["cached"] else ("to run" if dry_run else "done")
        click.echo(f"{s['stage']:<12} {state:<7} {s['folder']}")


# ---------------------------------------------------------------- the stages, in pipeline order
# stages/__init__.py imports them in order: `augur dg` is stages/dg/__init__.py's DG.command(), the Click group
# in stages/dg/command.py.
from toolkit.stages.descriptor import stages  # noqa: E402

for _stage in stages():
    main.add_command(_stage.command())


if __name__ == "__main__":
    main()
