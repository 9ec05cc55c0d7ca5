"""Stage 4, `augur dg`: domain generalization the DomainBed way (algorithms, hyper-parameter registry,
sweeps, three model-selection methods, collect_results tables).

This file is the stage's descriptor (stages/descriptor.py); the work is in stage.py, the command in
command.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..descriptor import (RecipeView, SmokeContext, Stage, StageResult, check_folder_key, check_weights_key,
                          pretrained_arch, register)

# What makes a row of results.jsonl a DG result row (a report leaves other rows out).
ROW_KEYS = {"label", "selection", "test_domain", "trial_seed", "hparams_seed", "val_acc", "test_acc", "dataset",
            "backbone", "weights"}


def result_of(res: dict[str, Any], main: bool = True) -> StageResult:
    return StageResult([f"dg: {len(res['rows'])} result rows → {res['results']}"], tables=[res["table"]],
                       files={"results": res["results"]}, data=res, printed=main)


@register
class DG(Stage):
    name = "dg"
    order = 40
    report_rank = 10
    refs = {"synthetic": ("render", "curate"), "weights": ("pretrain",)}
    settings_from = "config:DGConfig"
    command_from = "command:dg"

    def check(self, recipe: RecipeView, settings: Any) -> None:
        pretrained_arch(recipe, self.name, settings.backbone, settings.image_size, settings.weights == "pretrain")

    def preflight(self, recipe: RecipeView, settings: Any) -> None:
        check_folder_key(recipe, self, "data", settings.data)
        check_folder_key(recipe, self, "synthetic", settings.synthetic)
        check_weights_key(recipe, self, [settings.weights])

    def run(self, settings: Any, out: Path, recipe: RecipeView) -> StageResult:
        import dataclasses

        from ...core.distributed import is_main_process
        from .stage import run_dg

        cfg = dataclasses.replace(settings, quiet=not recipe.progress,
                                  synthetic=recipe.resolve(settings.synthetic, self.refs["synthetic"]) if settings.synthetic else None,
                                  weights=recipe.resolve(settings.weights, "pretrain"))
        return result_of(run_dg(cfg, out), is_main_process())

    def smoke(self, settings: Any, ctx: SmokeContext) -> Any:
        import dataclasses

        from ..smoke_data import SMOKE_CLASSES, make_dg_data, smoke_weights

        domains = ctx.domains
        if settings.single_source and settings.single_source not in domains:
            domains.append(settings.single_source)
        # at least three real domains: leave-one-out selection and single-source testing need the others
        domains += [f"domain_{c}" for c in "abc"][:max(0, 3 - len(domains))]
        data = settings.data
        if settings.data != "digits":
            data = str(ctx.data_root / "dg")
            if ctx.build:
                make_dg_data(Path(data), domains, ctx.classes or [f"class_{i}" for i in range(SMOKE_CLASSES)])
        return dataclasses.replace(settings, data=data, steps=6, checkpoint_freq=3, batch_size=4, trials=1, seeds=None,
                                   hparams_seed=[0], image_size=32,
                                   weights=smoke_weights(settings.weights, settings.backbone, ctx.build))

    def report(self, folders: list[Path], page: Any) -> None:
        from ...core.files import read_json, read_jsonl
        from .collect import tables

        from .collect import effective_hparams

        read = [effective_hparams(r) for f in folders if (f / "results.jsonl").is_file()
                for r in read_jsonl(f / "results.jsonl", tolerate_torn_tail=True)]
        from ...core.schema import fits
        from .collect import ROW_SCHEMA

        # a foreign or corrupt row is not read as a DG result
        rows = [r for r in read if ROW_KEYS <= set(r) and fits(r, ROW_SCHEMA)]
        if read and not rows:
            page.section("Domain generalization")
            page.text(f"(results.jsonl holds {len(read)} row(s), none of them DG result rows: not DG result rows, "
                      "left out.)")
        if not rows:
            return
        page.section("Domain generalization")
        page.text("DomainBed's protocol; mean ± standard error over trials (DomainBed's collect_results format).")
        page.markdown(tables(rows, style="markdown"))
        first = rows[0]["selection"]
        _bars([r for r in rows if r["selection"] == first], page.path("dg_bars.png"))
        page.figure("dg_bars.png", f"DG accuracy per held-out domain ({first})")
        if len(rows) < len(read):
            page.text(f"({len(read) - len(rows)} row(s) of results.jsonl are not DG result rows and were left out.)")
        for f in folders:
            ident = read_json(f / self.record).get("identity") or {}
            page.provenance("dg", ident.get("algorithm"), ident.get("weights_sha256") or "random init",
                            ident.get("seed", ""), f"{ident.get('backbone')}, {ident.get('image_size')} px, "
                                                   f"data {ident.get('data')}")

    def progress(self, folder: Path, section: dict[str, Any]) -> str:
        runs = len(list(folder.glob("runs/*/records.json")))
        return f"{runs} run(s) finished, results.jsonl not complete"


def _bars(rows: list[dict[str, Any]], path: Path) -> None:
    import numpy as np

    from ..report.page import finish_plot, pyplot

    labels = list(dict.fromkeys(r["label"] for r in rows))
    domains = list(dict.fromkeys(r["test_domain"] for r in rows))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(domains), 3))
    width = 0.8 / max(len(labels), 1)
    for k, a in enumerate(labels):
        means = [100 * float(np.mean([r["test_acc"] for r in rows if r["label"] == a and r["test_domain"] == d] or [0]))
                 for d in domains]
        ax.bar(np.arange(len(domains)) + k * width, means, width, label=a)
    ax.set_xticks(np.arange(len(domains)) + width * (len(labels) - 1) / 2, domains)
    finish_plot(fig, ax, "held-out domain", "test accuracy (%)", path, 7)
