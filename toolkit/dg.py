"""The `dg` stage: leave-one-domain-out domain generalization in the DomainBed manner.

For each test domain and seed: train on the other real domains (plus rendered domains with
--synthetic), hold out 20% of every training domain for validation, and report the test accuracy of
the epoch with the best *training-domain validation* accuracy. The test domain never selects anything.

Settings from "Beyond Finite Data": --synthetic adds rendered domains, --single-source trains on one
real domain (+ synthetic) and tests on every other, --data-free trains on synthetic data alone and
tests on every real domain.

Algorithms are a registry, one class each, hyper-parameters in one place (as DomainBed's
algorithms.py); ERM is the one the paper uses.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__, backbones, data
from .cache import key_of
from .errors import AugurError
from .distributed import is_main_process, wait_for_everyone
from .fileio import check_identity, read_jsonl
from .registry import registrar
from .train import Classifier, TrainConfig, accuracy, config_dict, fit

ALGORITHMS: dict[str, type] = {}


algorithm = registrar(ALGORITHMS)


@algorithm("ERM")
class ERM:
    """Empirical risk minimisation over the pooled training domains."""

    hparams: dict[str, Any] = {}

    @staticmethod
    def build(backbone, num_classes: int):
        return Classifier.build(backbone, num_classes)


@dataclass
class DGConfig:
    algorithm: str = "ERM"
    backbone: str = "resnet18"
    weights: Path | None = None  # a folder from `augur pretrain`, or a .safetensors file
    synthetic: Path | None = None
    single_source: str | None = None
    data_free: bool = False
    test_domains: list[str] | None = None  # None: every real domain in turn
    seeds: tuple[int, ...] = (0,)
    holdout: float = 0.2
    train: TrainConfig = None  # type: ignore[assignment]

    def validate(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise AugurError(f"unknown algorithm '{self.algorithm}'; choose one of {', '.join(ALGORITHMS)}")
        backbones.family(self.backbone)
        if self.data_free and self.synthetic is None:
            raise AugurError("--data-free trains on synthetic data only: give --synthetic DIR")
        if self.data_free and self.single_source:
            raise AugurError("--data-free and --single-source exclude each other")
        if not 0.0 < self.holdout < 1.0:
            raise AugurError("--holdout must be between 0 and 1")
        if not self.seeds:
            raise AugurError("give at least one seed")


def _trials(real: data.MultiDomain, cfg: DGConfig) -> list[dict[str, Any]]:
    """(train domains, test domains) per trial, for the chosen setting."""
    names = real.names
    for t in cfg.test_domains or []:
        real.domain(t)  # a clear error for an unknown domain
    if cfg.data_free:
        return [{"train": [], "test": list(cfg.test_domains or names), "label": "data-free"}]
    if cfg.single_source:
        src = real.domain(cfg.single_source).name
        return [{"train": [src], "test": [n for n in (cfg.test_domains or names) if n != src],
                 "label": f"single-source {src}"}]
    return [{"train": [n for n in names if n != t], "test": [t], "label": f"test {t}"}
            for t in (cfg.test_domains or names)]


def algorithm_label(cfg: DGConfig) -> str:
    label = cfg.algorithm
    if cfg.synthetic:
        label += "+synthetic"
    if cfg.weights:
        label += "+pretrained"
    if cfg.train.lora:
        label += "+LoRA"
    return label


def run_dg(source: str | Path, out: Path, cfg: DGConfig) -> dict[str, Any]:
    cfg.train = cfg.train or TrainConfig()
    cfg.validate()
    cfg.train.validate()
    out = Path(out)
    real = data.load(source)
    synth = data.load(cfg.synthetic) if cfg.synthetic else None
    if synth is not None:
        data.check_same_classes(real, synth)
    if cfg.weights:
        info = backbones.backbone_info(Path(cfg.weights))
        if info and info.get("backbone") != cfg.backbone:
            raise AugurError(f"{cfg.weights} holds a {info['backbone']} backbone, not {cfg.backbone}")
    classes = real.classes
    trials = _trials(real, cfg)
    label = algorithm_label(cfg)
    identity = {"data": str(source), "algorithm": cfg.algorithm, "backbone": cfg.backbone,
                "weights": str(cfg.weights) if cfg.weights else None,
                "synthetic": str(cfg.synthetic) if cfg.synthetic else None, "single_source": cfg.single_source,
                "data_free": cfg.data_free, "holdout": cfg.holdout,
                "train": {k: v for k, v in config_dict(cfg.train).items() if k != "seed"}}
    check_identity(out, "dg.json", identity, "more seeds or test domains may be added to a run; other changes need another --out")
    results_file = out / "results.jsonl"
    done = {(r["trial"], r["seed"], r["test_domain"]) for r in read_jsonl(results_file)} if results_file.exists() else set()
    t0 = time.perf_counter()
    for trial in trials:
        for seed in cfg.seeds:
            if all((trial["label"], seed, t) in done for t in trial["test"]):
                continue
            rows = _run_trial(real, synth, classes, trial, seed, cfg, label, out)
            if is_main_process():
                _append(results_file, rows)
            wait_for_everyone()
    rows = read_jsonl(results_file)
    return {"rows": rows, "table": table(rows), "wall_seconds": time.perf_counter() - t0,
            "results": str(results_file)}


def _run_trial(real, synth, classes, trial, seed, cfg: DGConfig, label: str, out: Path) -> list[dict[str, Any]]:
    import torch

    index = {c: i for i, c in enumerate(classes)}
    tcfg = TrainConfig(**{**config_dict(cfg.train), "seed": seed, "progress": cfg.train.progress})
    train_parts, val_parts = [], []
    train_domains = [real.domain(n) for n in trial["train"]]
    if synth is not None:
        # Synthetic labels index synth.classes; map them onto the real label set.
        remap = np.array([index[c] for c in synth.classes])
        train_domains += [data.Domain(f"synthetic/{d.name}", d.images, remap[d.labels]) for d in synth.domains]
    for d in train_domains:
        tr, va = data.split(len(d.labels), cfg.holdout, seed)
        train_parts.append((d, tr))
        val_parts.append((d, va))
    if not train_parts:
        raise AugurError("no training domains for this setting")
    train_set = data.ImageSet(train_parts, tcfg.image_size)
    val_set = data.ImageSet(val_parts, tcfg.image_size)
    tests = {t: data.ImageSet([(real.domain(t), np.arange(len(real.domain(t).labels)))], tcfg.image_size)
             for t in trial["test"]}
    torch.manual_seed(seed)
    backbone = backbones.create(cfg.backbone, tcfg.image_size)
    if cfg.weights:
        backbones.load_weights(backbone, Path(cfg.weights))
    if tcfg.lora:
        backbone = backbones.add_lora(backbone, cfg.backbone, tcfg.lora_rank)
    model = ALGORITHMS[cfg.algorithm].build(backbone, len(classes))
    if tcfg.lora:
        for p in model.head.parameters():
            p.requires_grad_(True)

    def evaluate(m) -> dict[str, float]:
        # Evaluated at the training batch size: another size makes oneDNN pick new kernels, and the next
        # epoch's training then pays for picking the training ones again.
        bs = tcfg.batch_size
        res = {"val_acc": accuracy(m, val_set, bs)}
        res.update({f"test_acc/{t}": accuracy(m, s, bs) for t, s in tests.items()})
        return res

    trial_key = key_of(trial["label"], seed, label)[:12]
    history = fit(model, train_set, tcfg, out / "trials" / f"{_slug(trial['label'])}-s{seed}-{trial_key}", evaluate)
    best = max(history, key=lambda h: (h["val_acc"], -h["epoch"]))  # earliest epoch among ties
    rows = []
    for t in trial["test"]:
        rows.append({"algorithm": label, "trial": trial["label"], "test_domain": t, "seed": seed,
                     "train_domains": trial["train"] + ([f"synthetic:{cfg.synthetic}"] if synth else []),
                     "selection": "training-domain validation", "selected_epoch": best["epoch"],
                     "val_acc": best["val_acc"], "test_acc": best[f"test_acc/{t}"],
                     "backbone": cfg.backbone, "weights": str(cfg.weights) if cfg.weights else "random",
                     "train": config_dict(tcfg), "images_per_second": float(np.mean([h["images_per_second"]
                                                                                    for h in history])),
                     "toolkit_version": __version__})
    return rows


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in s).strip("-")


def _append(path: Path, rows: list[dict[str, Any]]) -> None:
    from .render import append_rows

    path.parent.mkdir(parents=True, exist_ok=True)
    append_rows(path, rows)


def table(rows: list[dict[str, Any]]) -> str:
    """DomainBed collect_results style: accuracy per test domain, mean ± std over seeds, and Avg."""
    if not rows:
        return "(no results)"
    algos = sorted({r["algorithm"] for r in rows})
    domains = sorted({r["test_domain"] for r in rows}, key=lambda d: (len(d), d))
    header = ["Algorithm", *domains, "Avg"]
    lines = []
    for a in algos:
        cells, means = [a], []
        for d in domains:
            accs = [100 * r["test_acc"] for r in rows if r["algorithm"] == a and r["test_domain"] == d]
            if accs:
                means.append(np.mean(accs))
                cells.append(f"{np.mean(accs):.1f} ± {np.std(accs):.1f}")
            else:
                cells.append("X")
        cells.append(f"{np.mean(means):.1f}" if len(means) == len(domains) else "X")
        lines.append(cells)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *lines)]
    fmt = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(header), *(fmt(l) for l in lines)])
