"""The `pretrain` stage (Premonition): supervised training on synthetic images, head thrown away.

Saves OUT/backbone.safetensors (merged), with LoRA also the adapter, and OUT/card.json (written last)
recording the architecture, data, steps, seed and provenance. The folder records the run's identity
(settings, data fingerprint, initial weights): a re-run with other settings is refused, `--force`
retrains from scratch, and a killed run resumes at its last epoch.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ... import __version__
from ...core import threads as core_threads
from ...core.device import torch_device
from ...core.errors import AugurError
from ...core.faults import kill_point
from ...core.files import read_json
from ...core.settings import as_dict
from ...core.stagerun import StageResult, StageRun
from ...learn import backbones, data, loop
from ...learn.classifier import Classifier
from ...learn.images import ImageStore
from ...learn.loaders import EpochBatches
from ...learn.transforms import data_config
from ...models.weights import resolve_weights
from .config import PretrainConfig


def pretrain(cfg: PretrainConfig, out: Path) -> StageResult:
    """Supervised training on a DomainBed-layout folder -> OUT/backbone.safetensors (no head) and card.json; the
    StageResult's data is the card."""
    from ...core.distributed import is_main_process

    out = Path(out)
    card = _train(cfg, out)
    return StageResult([card["line"]], files={"backbone": str(out / "backbone.safetensors")}, data=card,
                       printed=is_main_process())


def _train(cfg: PretrainConfig, out: Path) -> dict[str, Any]:
    import torch

    choice = core_threads.apply(cfg.threads)
    arch, w = resolve_weights(cfg.weights, cfg.backbone)
    cfg, size_choice = cfg.sized(arch, w)
    ds = data.load(cfg.data)
    items = ds.pooled()
    if len(items) < 2:
        raise AugurError(f"{cfg.data}: {len(items)} training image(s); pretraining needs at least 2")
    identity = {**as_dict(cfg), "backbone": arch, "weights_sha256": w.sha256, "data": data.fingerprint(ds)}
    precision = cfg.train_precision()  # refused here, before the folder is made, if the device cannot run it
    with StageRun(out, "pretrain", identity, force=cfg.force, hint="use another --out, or --force to retrain") as run:
        if (out / "card.json").is_file():  # the claim matched this run's settings: it is done
            if run.main:
                loop.clear(out / "checkpoint")
            card = read_json(out / "card.json")
            card["line"] = f"pretrain: already done → {out / 'backbone.safetensors'}"
            return card
        t0 = time.perf_counter()
        torch.manual_seed(cfg.seed)
        model = backbones.build(arch, w, cfg.image_size)
        dc = data_config(model, cfg.image_size)
        base_state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()} if cfg.lora else None
        if cfg.lora:
            model = backbones.add_lora(model, arch, cfg.lora_rank)
        net = Classifier(model, len(ds.classes), cfg.lr, cfg.weight_decay)
        store = ImageStore(items, dc, torch_device(), workers=cfg.workers)
        items = store.items  # the readable ones
        if len(items) < 2:
            raise AugurError(f"{cfg.data}: {len(items)} readable training image(s); pretraining needs at least 2")
        batches = EpochBatches(len(store), cfg.batch_size, cfg.seed, "pretrain", run.world)
        feed = store.feed(np.arange(len(store)), batches)
        spe = batches.steps_per_epoch

        def stream(start: int, stop: int):
            for x, y in feed.stream(start, stop):
                yield [(x, y)]

        records = loop.run(net, stream, total_steps=cfg.epochs * spe, is_checkpoint=lambda s: (s + 1) % spe == 0,
                           ckpt=out / "checkpoint", seed=cfg.seed, precision=precision, progress=cfg.progress,
                           desc="pretrain")
        history = [{"epoch": (r["step"] + 1) // spe, **{k: v for k, v in r.items() if k != "step"}} for r in records]
        card = {"stage": "pretrain", "toolkit_version": __version__, "data": str(cfg.data), "classes": ds.classes,
                "domains": ds.names, "images": len(items), "steps": cfg.epochs * spe, "data_config": dc.as_dict(),
                # the settings as applied: the architecture, precision and workers chosen, no LoRA rank without LoRA
                "train": {**as_dict(cfg), "backbone": arch, "precision": precision, "workers": store.workers,
                          "lora_rank": cfg.lora_rank if cfg.lora else None},
                "image_size": cfg.image_size, "image_size_choice": size_choice, "seed": cfg.seed, "history": history, **w.provenance(),
                "init_weights": w.describe(), "head": "discarded (Premonition: only the backbone is kept)",
                **choice.provenance()}
        if run.main:  # under `accelerate launch` the others only trained
            backbones.save_pretrained(net.backbone, out, name=arch, lora=cfg.lora, base_state=base_state, card=card)
            kill_point("pretrain.after_save")
            loop.clear(out / "checkpoint")
            run.finish()
        run.wait()
        card = read_json(out / "card.json")
        wall = time.perf_counter() - t0
        ips = float(np.mean([h["images_per_second"] for h in history])) if history else 0.0
        epochs = f"{cfg.epochs} epoch{'s' if cfg.epochs != 1 else ''}"
        card["line"] = (f"pretrain: {arch}{' + LoRA' if cfg.lora else ''} from {w.describe()} on {len(items)} images "
                        f"of {len(ds.classes)} classes, {epochs} ({ips:.0f} img/s), final loss "
                        f"{history[-1]['loss']:.3f}; {wall:.1f} s → {out / 'backbone.safetensors'}")
        return card
