"""The `dg` stage: domain generalization with DomainBed's protocol.

A sweep is a set of runs, as DomainBed's: for each trial seed, hyper-parameter draw and set of test
environments, one run trains an algorithm on the other environments with one minibatch per training
environment per step (infinite loaders, sampling with replacement), and evaluates every split of every
environment at every checkpoint. Every environment is split into in (80%) and out (20%, the
holdout fraction) by DomainBed's seeds. From the same runs come all three model-selection methods
(selection.py); leave-one-out adds one run per pair of real domains.

Settings of Beyond Finite Data: --synthetic adds rendered domains as training environments (one
environment, or one per rendered domain), --single-source trains on one real domain (+ synthetic) and
tests on every other, --data-free trains on synthetic data alone and tests on every real domain.

Output: OUT/results.jsonl, one row per test domain x trial x hyper-parameter draw x selection method;
OUT/runs/<run>/records.json, every checkpoint record of a run; `augur dg collect` makes the tables.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ... import __version__
from ...core import distributed, outdir
from ...core.device import pick_device, resolve_precision, threads
from ...core.errors import AugurError
from ...core.faults import kill_point
from ...core.files import append_jsonl, read_json, read_jsonl, write_json, write_jsonl
from ...core.names import path_name
from ...core.settings import as_dict, check_hparams
from ...learn import backbones, data, loop
from ...learn.loaders import ImageSet, InfiniteBatches, default_workers, eval_batches, loader
from ...learn.transforms import data_config
from . import selection as sel
from .algorithms import ALGORITHMS
from .config import DGConfig
from .hparams import declared, hparams_for, seed_hash

N_STEPS = 5001  # DomainBed's MultipleDomainDataset.N_STEPS
CHECKPOINT_FREQ = {"small": 100, "large": 300}  # RotatedMNIST's default; the image folders' (PACS, VLCS, ...)
EVAL_BATCH = 64  # DomainBed's FastDataLoader batch size


@dataclass
class Env:
    name: str
    items: list[tuple[Any, int]]
    real: bool


@dataclass(frozen=True)
class RunSpec:
    test_envs: tuple[str, ...]
    trial: int
    hparams_seed: int

    @property
    def key(self) -> str:
        return path_name(f"test-{'+'.join(self.test_envs)}-trial{self.trial}-hp{self.hparams_seed}")


def size_class(cfg: DGConfig) -> str:
    return "small" if str(cfg.data) == "digits" else "large"


def environments(cfg: DGConfig) -> tuple[list[str], list[Env], data.MultiDomain]:
    real = data.load(cfg.data)
    envs = [Env(d.name, [(img, int(lab)) for img, lab in zip(d.images, d.labels)], True) for d in real.domains]
    if cfg.synthetic:
        synth = data.load(cfg.synthetic)
        data.check_same_classes(real, synth)
        remap = {i: real.classes.index(c) for i, c in enumerate(synth.classes)}
        if cfg.synthetic_envs == "one":
            envs.append(Env("synthetic", [(img, remap[int(lab)]) for d in synth.domains
                                          for img, lab in zip(d.images, d.labels)], False))
        else:
            envs += [Env(f"synthetic/{d.name}", [(img, remap[int(lab)]) for img, lab in zip(d.images, d.labels)],
                         False) for d in synth.domains]
    return real.classes, envs, real


def setting_of(cfg: DGConfig) -> str:
    return "data-free" if cfg.data_free else ("single-source" if cfg.single_source else "leave-one-domain-out")


def plan_runs(cfg: DGConfig, real_names: list[str]) -> tuple[list[RunSpec], list[str]]:
    """Every run the sweep needs, and the test domains its rows are about."""
    tests = cfg.test_domains or real_names
    for t in tests:
        if t not in real_names:
            raise AugurError(f"no domain '{t}' in {cfg.data}; domains: {', '.join(real_names)}")
    runs: list[RunSpec] = []
    for trial in cfg.trial_seeds():
        for h in cfg.hparams_seed:
            if cfg.data_free:
                runs.append(RunSpec(tuple(real_names), trial, h))
                continue
            if cfg.single_source:
                if cfg.single_source not in real_names:
                    raise AugurError(f"no domain '{cfg.single_source}' in {cfg.data}; domains: {', '.join(real_names)}")
                runs.append(RunSpec(tuple(n for n in real_names if n != cfg.single_source), trial, h))
                continue
            pairs = set()
            for t in tests:
                runs.append(RunSpec((t,), trial, h))
                if "leave-one-out" in cfg.selection:
                    pairs |= {tuple(sorted((t, v), key=real_names.index)) for v in real_names if v != t}
            runs += [RunSpec(p, trial, h) for p in sorted(pairs, key=lambda p: [real_names.index(x) for x in p])]
    if cfg.single_source:
        tests = [t for t in tests if t != cfg.single_source]
        if not tests:  # otherwise the sweep trains, tests nothing and writes an empty table
            raise AugurError(f"single source '{cfg.single_source}' leaves no domain to test on in {cfg.data}")
    return runs, tests


def label_of(cfg: DGConfig) -> str:
    label = cfg.algorithm + ("+SWAD" if cfg.swad else "")
    if cfg.synthetic:
        label += f"+synthetic({cfg.synthetic_envs})"
    if cfg.lora:
        label += "+LoRA"
    return label


def run_dg(cfg: DGConfig, out: Path) -> dict[str, Any]:
    out = Path(out)
    t0 = time.perf_counter()
    arch, w = backbones.resolve_weights(cfg.weights, cfg.backbone)
    classes, envs, real = environments(cfg)
    real_names = [e.name for e in envs if e.real]
    runs, tests = plan_runs(cfg, real_names)
    size = size_class(cfg)
    pretrained = w.kind != "none"
    hp_declared = declared(cfg.algorithm, size, pretrained, cfg.swad)
    overrides = check_hparams(dict(cfg.hp), hp_declared, cfg.algorithm, where="--hp: ")
    if cfg.lr is not None:
        overrides["lr"] = cfg.lr
    if cfg.batch_size is not None:
        overrides["batch_size"] = cfg.batch_size
    overrides.setdefault("data_augmentation", cfg.augment)
    identity = {k: v for k, v in as_dict(cfg).items()
                if k not in ("seeds", "trials", "hparams_seed", "test_domains", "selection", "hp", "lr",
                             "batch_size", "augment", "workers")}
    identity.update({"backbone": arch, "weights_sha256": w.sha256, "data_fingerprint": data.fingerprint(real),
                     "hparam_overrides": overrides})
    resolve_precision(cfg.precision, pick_device(), "train")  # refused before the folder is made
    main = distributed.is_main_process()
    if pretrained and size == "small" and "lr" not in overrides and 0 in cfg.hparams_seed and main:
        # DomainBed's small-image lr is for its MNIST CNN trained from scratch; it never pairs small images with
        # pretrained weights (5e-5 there). Measured on RotatedDigits: 1e-3 leaves Mixup and MMD at chance.
        print(f"warning: --weights {cfg.weights} with small-image defaults uses DomainBed's from-scratch lr "
              f"{hp_declared['lr'].default:g}; a pretrained backbone usually wants --hp lr=5e-5 (or a sweep)",
              file=sys.stderr)
    claim = outdir.claim(out, "dg", identity,
                         hint="more seeds, hyper-parameter draws or test domains may be added to a run; other "
                              "changes need another --out") if main else None
    distributed.wait_for_everyone()
    try:
        for spec in runs:
            if not (out / "runs" / spec.key / "records.json").is_file():
                _train_run(cfg, spec, envs, classes, arch, w, size, pretrained, overrides, out)
            elif main:
                loop.clear(out / "runs" / spec.key / "checkpoint")  # killed after its records were written
        rows = _rows(cfg, runs, tests, envs, arch, w, size, out)
        if main:
            kill_point("dg.before_results")
            done = {_row_key(r) for r in _read_results(out)}
            append_jsonl(out / "results.jsonl", [r for r in rows if _row_key(r) not in done])
            everything = sorted(_read_results(out), key=_row_order)
            write_jsonl(out / "results.jsonl", everything)
            claim.finish()
        distributed.wait_for_everyone()
    finally:
        if claim is not None:
            claim.release()
    from .collect import tables

    rows = _read_results(out)
    return {"rows": rows, "table": tables(rows, selections=cfg.selection), "wall_seconds": time.perf_counter() - t0,
            "results": str(out / "results.jsonl")}


def _read_results(out: Path) -> list[dict[str, Any]]:
    f = out / "results.jsonl"
    return read_jsonl(f, tolerate_torn_tail=True) if f.is_file() else []


def _row_key(r: dict[str, Any]) -> tuple:
    return (r["label"], r["test_domain"], r["trial_seed"], r["hparams_seed"], r["selection"])


def _row_order(r: dict[str, Any]) -> tuple:
    return (r["trial_seed"], r["hparams_seed"], r["domain_index"], r["selection_index"])


def _train_run(cfg: DGConfig, spec: RunSpec, envs: list[Env], classes: list[str], arch: str, w, size: str,
               pretrained: bool, overrides: dict[str, Any], out: Path) -> None:
    import torch

    from .swad import SWAD, update_bn

    hparams = {**hparams_for(cfg.algorithm, size, spec.hparams_seed, spec.trial, pretrained, cfg.swad), **overrides}
    run_seed = seed_hash(cfg.algorithm, spec.test_envs, spec.trial, spec.hparams_seed)
    steps = cfg.steps or N_STEPS
    freq = cfg.checkpoint_freq or CHECKPOINT_FREQ[size]
    # DomainBed: each environment split in (train / evaluate) and out (validate) by seed_hash(trial, env_i).
    splits = {e.name: data.split(len(e.items), cfg.holdout_fraction, seed_hash(spec.trial, i))
              for i, e in enumerate(envs)}
    train_envs = [e for e in envs if e.name not in spec.test_envs and (e.real is False or not cfg.data_free)]
    if cfg.single_source:
        train_envs = [e for e in envs if e.name == cfg.single_source or not e.real]
    if not train_envs:
        raise AugurError("no training environments for this setting")
    for e in train_envs:
        if len(splits[e.name][0]) < 2:
            raise AugurError(f"environment '{e.name}' has {len(splits[e.name][0])} training image(s); each needs at least 2")
    val_envs = [e for e in train_envs if len(splits[e.name][1])]
    if not val_envs and (cfg.swad or "training-domain" in cfg.selection):
        raise AugurError(f"--holdout-fraction {cfg.holdout_fraction} holds out no image of any training environment: "
                         "training-domain validation has nothing to select on (raise it, or add images)")
    torch.manual_seed(run_seed)
    backbone = backbones.build(arch, w, cfg.image_size)
    dc = data_config(backbone, cfg.image_size)
    if cfg.lora:
        backbone = backbones.add_lora(backbone, arch, cfg.lora_rank)
    algorithm = ALGORITHMS.get(cfg.algorithm)(backbone, len(classes), len(train_envs), hparams)
    learner = SWAD(algorithm, hparams) if cfg.swad else algorithm
    state = distributed.state()
    world = (state.process_index, state.num_processes) if state is not None else (0, 1)
    workers = cfg.workers if cfg.workers is not None else default_workers(
        all(isinstance(e.items[0][0], np.ndarray) for e in envs), sum(len(e.items) for e in envs), cfg.image_size)
    train_sets, streams = [], []
    for i, e in enumerate(train_envs):
        in_idx = splits[e.name][0]
        items = [e.items[j] for j in in_idx]
        train_sets.append(ImageSet(items, dc, augment=bool(hparams["data_augmentation"])))
        weights = _balanced_weights(items) if hparams["class_balanced"] else None
        streams.append(InfiniteBatches(len(items), int(hparams["batch_size"]), run_seed, ("env", e.name), world,
                                       weights=weights))
    eval_sets = {(e.name, part): ImageSet([e.items[j] for j in splits[e.name][k]], dc)
                 for e in envs for k, part in enumerate(("in", "out"))}
    device_of = lambda m: next(m.parameters()).device  # noqa: E731

    def stream(start: int, stop: int):
        loaders = [loader(ds, b, start, stop, workers) for ds, b in zip(train_sets, streams)]
        for batches in zip(*loaders):
            yield list(batches)

    def evaluate(model) -> dict[str, Any]:
        predict = model.predict
        result: dict[str, Any] = {"acc": {}, "loss": {}}
        for (name, part), ds in eval_sets.items():
            correct = total = 0
            loss_sum = 0.0
            for x, y in eval_batches(ds, EVAL_BATCH):
                logits = predict(x.to(device_of(model))).float()
                correct += int((logits.argmax(1).cpu() == y).sum())
                loss_sum += float(torch.nn.functional.cross_entropy(logits.cpu(), y, reduction="sum"))
                total += len(y)
            result["acc"].setdefault(name, {})[part] = [correct, total]
            result["loss"].setdefault(name, {})[part] = loss_sum / max(total, 1)
        return result

    def on_checkpoint(model, step: int, record: dict[str, Any]) -> None:
        if cfg.swad:
            val_loss = float(np.mean([record["loss"][e.name]["out"] for e in val_envs]))
            model.evaluated(step, val_loss)

    run_dir = out / "runs" / spec.key
    records = loop.run(learner, stream, total_steps=steps, is_checkpoint=lambda s: s % freq == 0,
                       ckpt=run_dir / "checkpoint", seed=run_seed, precision=cfg.precision, evaluate=evaluate,
                       progress=cfg.progress, desc=f"dg {cfg.algorithm} {spec.key}", on_checkpoint=on_checkpoint)
    steps_per_epoch = min(len(splits[e.name][0]) / hparams["batch_size"] for e in train_envs)
    result: dict[str, Any] = {"spec": {"test_envs": list(spec.test_envs), "trial": spec.trial,
                                       "hparams_seed": spec.hparams_seed},
                              "train_envs": [e.name for e in train_envs], "hparams": hparams, "seed": run_seed,
                              "steps": steps, "checkpoint_freq": freq, "steps_per_epoch": steps_per_epoch,
                              "data_config": dc.as_dict(), "records": records}
    if cfg.swad:
        averaged = learner.averaged_model()
        averaged_steps = learner.final_range()
        if not hparams.get("freeze_bn") and hparams["swad_bn_steps"] > 0:
            update_bn(averaged, stream(steps, steps + int(hparams["swad_bn_steps"])), device_of(averaged))
        averaged.eval()
        with torch.inference_mode():
            result["swad"] = {"step": records[-1]["step"], **evaluate(averaged), **{
                k: learner.meta[k] for k in ("converge_step", "dead_valley")},
                "averaged_steps": averaged_steps}
    if distributed.is_main_process():
        write_json(run_dir / "records.json", result)
        kill_point("dg.after_run")
        loop.clear(run_dir / "checkpoint")
    distributed.wait_for_everyone()


def _balanced_weights(items: list[tuple[Any, int]]) -> np.ndarray:
    """misc.make_weights_for_balanced_classes: 1 / (count[y] * n_classes) per sample."""
    labels = np.array([y for _, y in items])
    counts = {y: int((labels == y).sum()) for y in np.unique(labels)}
    return np.array([1.0 / (counts[y] * len(counts)) for y in labels])


def _rows(cfg: DGConfig, runs: list[RunSpec], tests: list[str], envs: list[Env], arch: str, w, size: str,
          out: Path) -> list[dict[str, Any]]:
    real_names = [e.name for e in envs if e.real]
    results = {spec: read_json(out / "runs" / spec.key / "records.json") for spec in runs}
    label = label_of(cfg)
    device = pick_device()
    base = {"label": label, "algorithm": cfg.algorithm, "dataset": str(cfg.data), "setting": setting_of(cfg),
            "domains": real_names, "backbone": arch, "weights": w.describe(), "weights_sha256": w.sha256,
            "image_size": cfg.image_size, "lora": cfg.lora, "swad": cfg.swad,
            "synthetic": cfg.synthetic, "synthetic_envs": cfg.synthetic_envs if cfg.synthetic else None,
            "holdout_fraction": cfg.holdout_fraction, "size_class": size, "device": device,
            "precision": resolve_precision(cfg.precision, device, "train"), "threads": threads(),
            "toolkit_version": __version__}
    rows = []
    for spec, res in results.items():
        if cfg.data_free or cfg.single_source:
            row_tests = [t for t in tests if t in spec.test_envs]
        elif len(spec.test_envs) == 1 and spec.test_envs[0] in tests:
            row_tests = [spec.test_envs[0]]
        else:
            continue  # a leave-one-out pair run: read through the single run below
        records = res["records"]
        for t in row_tests:
            picked: dict[str, Any] = {}
            if cfg.swad:
                if "training-domain" in cfg.selection:
                    s = res["swad"]
                    val_domains = sel.validation_envs(s, res["train_envs"])
                    val = float(np.mean([sel.acc(s, e, "out") for e in val_domains]))
                    picked["training-domain"] = {"val_acc": val, "validation_domains": val_domains, "test_acc": sel.whole(s, t),
                                                 "test_in_acc": sel.acc(s, t, "in"), "selected_step": s["step"],
                                                 "swad_steps": s["averaged_steps"], "swad_dead_valley": s["dead_valley"]}
            else:
                if "training-domain" in cfg.selection:
                    picked["training-domain"] = sel.training_domain(records, res["train_envs"], t)
                if "oracle" in cfg.selection:
                    picked["oracle"] = sel.oracle(records, t)
                if "leave-one-out" in cfg.selection and not (cfg.data_free or cfg.single_source):
                    pairs = {v: results[RunSpec(tuple(sorted((t, v), key=real_names.index)), spec.trial,
                                                spec.hparams_seed)]["records"] for v in real_names if v != t}
                    picked["leave-one-out"] = sel.leave_one_out(records, pairs, t)
            for method, row in picked.items():
                if row is None:
                    continue
                rows.append({**base, **row, "selection": method, "selection_index": sel_index(method),
                             "test_domain": t, "domain_index": real_names.index(t),
                             "trial_seed": spec.trial, "seed": res["seed"], "hparams_seed": spec.hparams_seed,
                             "hparams": res["hparams"], "train_domains": res["train_envs"], "steps": res["steps"],
                             "checkpoint_freq": res["checkpoint_freq"],
                             "images_per_second": float(np.mean([r["images_per_second"] for r in records]))})
    return rows


def sel_index(method: str) -> int:
    from .config import SELECTIONS

    return SELECTIONS.index(method)
