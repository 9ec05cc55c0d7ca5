"""The `pretrain` stage (Premonition): supervised training on synthetic images, head thrown away.

Saves OUT/backbone.safetensors (merged), with LoRA also the adapter, and OUT/card.json recording the
data, steps, seed and provenance.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__, backbones, data
from .distributed import is_main_process, wait_for_everyone
from .fileio import read_json, refuse_overwrite
from .train import Classifier, TrainConfig, config_dict, fit


def pretrain(source: str | Path, out: Path, *, backbone: str = "resnet18", weights: Path | None = None,
             cfg: TrainConfig | None = None, force: bool = False) -> dict[str, Any]:
    import torch

    cfg = cfg or TrainConfig()
    cfg.validate()
    out = Path(out)
    refuse_overwrite(out / "backbone.safetensors", force)
    backbones.family(backbone)
    ds = data.load(source)
    parts = [(d, np.arange(len(d.labels))) for d in ds.domains]
    train_set = data.ImageSet(parts, cfg.image_size)
    torch.manual_seed(cfg.seed)
    model = backbones.create(backbone, cfg.image_size)
    if weights:
        backbones.load_weights(model, Path(weights))
    base_state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()} if cfg.lora else None
    if cfg.lora:
        model = backbones.add_lora(model, backbone, cfg.lora_rank)
    net = Classifier.build(model, len(ds.classes))
    t0 = time.perf_counter()
    history = fit(net, train_set, cfg, out / "checkpoint")
    card = {"stage": "pretrain", "toolkit_version": __version__, "data": str(source), "classes": ds.classes,
            "domains": ds.names, "images": len(train_set), "steps": cfg.epochs * -(-len(train_set) // cfg.batch_size),
            "train": config_dict(cfg), "image_size": cfg.image_size, "seed": cfg.seed, "history": history,
            "init_weights": str(weights) if weights else "random",
            "head": "discarded (Premonition: only the backbone is kept)"}
    # net.backbone is what was trained; the head stays behind.
    if is_main_process():  # under `accelerate launch` the others only trained
        backbones.save_pretrained(net.backbone, out, name=backbone, lora=cfg.lora, base_state=base_state, card=card)
    wait_for_everyone()
    card = read_json(out / "card.json")
    wall = time.perf_counter() - t0
    ips = float(np.mean([h["images_per_second"] for h in history])) if history else 0.0
    card["line"] = (f"pretrain: {backbone}{' + LoRA' if cfg.lora else ''} on {len(train_set)} images of "
                    f"{len(ds.classes)} classes, {cfg.epochs} epochs ({ips:.0f} img/s), final loss "
                    f"{history[-1]['loss']:.3f}; {wall:.1f} s → {out / 'backbone.safetensors'}")
    return card
