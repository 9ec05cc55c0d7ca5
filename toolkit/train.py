"""One supervised training loop for pretrain and dg: accelerate, per-epoch checkpoints, exact resume.

Exactness: the shuffle order of epoch e comes from a generator seeded by (seed, e), and everything
else that changes during training (weights, optimizer, RNG state) is in the checkpoint, so a run
killed after epoch k and resumed computes what the uninterrupted run computes (on CPU).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm

from .cache import derive_seed
from .errors import AugurError
from .fileio import write_json


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class TrainConfig:
    epochs: int = 5
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    image_size: int = 32
    seed: int = 0
    lora: bool = False
    lora_rank: int = 8
    precision: str = "auto"  # see resolve_precision
    progress: bool = True

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise AugurError("--epochs and --batch-size must be at least 1")
        if self.lr <= 0:
            raise AugurError("--lr must be positive")
        if self.image_size < 16:
            raise AugurError("--image-size must be at least 16")
        if self.precision not in PRECISIONS:
            raise AugurError(f"unknown precision '{self.precision}'; choose one of {', '.join(PRECISIONS)}")
        resolve_precision(self.precision)  # refuses what this machine cannot run, before anything is written


def resolve_precision(requested: str) -> str:
    """fp32, bf16 or fp16 (mixed precision through accelerate's autocast; fp16 adds a grad scaler).

    auto: what `accelerate launch --mixed_precision` asked for, else bf16 (fp16 on GPUs without bf16)
    on CUDA and fp32 on CPU.
    """
    import torch

    cuda = torch.cuda.is_available()
    if requested == "auto":
        launched = os.environ.get("ACCELERATE_MIXED_PRECISION")  # set by `accelerate launch --mixed_precision`
        if launched in ("no", "bf16", "fp16"):
            requested = "fp32" if launched == "no" else launched
        elif cuda:
            requested = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            requested = "fp32"  # CPU autocast is opt-in: bf16 is only fast on CPUs with bf16 units
    if requested == "fp16" and not cuda:
        raise AugurError("--precision fp16 needs a CUDA GPU; on CPU use bf16 or fp32")
    return requested


class Classifier:
    """backbone → linear head; built lazily so torch is imported only when training."""

    @staticmethod
    def build(backbone, num_classes: int):
        import torch

        class _Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.backbone = backbone
                self.head = torch.nn.Linear(backbone.num_features if hasattr(backbone, "num_features")
                                            else backbone.base_model.model.num_features, num_classes)

            def forward(self, x):
                return self.head(self.backbone(x))

        return _Net()


def accuracy(model, dataset, batch_size: int = 256) -> float:
    import torch
    from torch.utils.data import DataLoader

    if len(dataset) == 0:
        return float("nan")
    model.eval()
    correct = 0
    device = next(model.parameters()).device  # wherever accelerate put it
    with torch.inference_mode():
        for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            correct += (model(x.to(device)).argmax(1).cpu() == y).sum().item()
    return correct / len(dataset)


def fit(model, train_set, cfg: TrainConfig, ckpt: Path,
        evaluate: Callable[[Any], dict[str, float]] | None = None) -> list[dict[str, Any]]:
    """Train `model` for cfg.epochs; checkpoint each epoch under `ckpt`; resume from the last one.

    Returns the per-epoch history (loss, images/s, and whatever `evaluate` measured).
    """
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader, RandomSampler

    cfg.validate()
    if len(train_set) == 0:
        raise AugurError("no training images")
    ckpt = Path(ckpt)
    precision = resolve_precision(cfg.precision)
    # accelerate keeps one process-wide state and refuses a second precision in the same process (a
    # recipe's stages, a library caller): each fit is its own run. The process group is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(cpu=not torch.cuda.is_available(),
                              mixed_precision="no" if precision == "fp32" else precision)
    set_seed(cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    history: list[dict[str, Any]] = []
    start = 0
    progress_file = ckpt / "progress.json"
    if accelerator.is_main_process and not (ckpt / "state").exists() and (ckpt / "state.old").exists():
        (ckpt / "state.old").rename(ckpt / "state")  # killed mid-swap: the old state matches progress.json
    accelerator.wait_for_everyone()
    if progress_file.exists():
        state = json.loads(progress_file.read_text())
        start, history = state["epoch"], state["history"]
        accelerator.load_state(str(ckpt / "state"))
    loss_fn = torch.nn.CrossEntropyLoss()
    # A step whose loss or gradients are not finite is skipped, as fp16's GradScaler does, with the
    # BatchNorm statistics its forward pass touched put back. bf16 needs it on CPU: with torch 2.14.1
    # (oneDNN 3.12) on an AMX CPU, bf16 conv weight gradients came out NaN now and then (in about one
    # run in three, a few steps each; never twice alike), the kind of stray-memory read oneDNN fixed
    # in uxlfoundation/oneDNN#5717. Gradients are checked under bf16 and across processes
    # (all-reduced gradients are the same everywhere, so every process decides alike); else the loss,
    # already read for the progress bar, suffices. fp16 is left to accelerate's GradScaler, which must
    # see every step to tune its scale. Most of an epoch's steps skipped means the run diverged.
    guard = precision != "fp16"
    check_grads = precision == "bf16" or accelerator.num_processes > 1
    stats = [b for b in accelerator.unwrap_model(model).buffers() if b.is_floating_point()] if guard else []
    for epoch in range(start, cfg.epochs):
        g = torch.Generator().manual_seed(derive_seed(cfg.seed, "epoch", epoch))
        loader = accelerator.prepare(DataLoader(train_set, batch_size=cfg.batch_size,
                                                sampler=RandomSampler(train_set, generator=g), drop_last=False))
        model.train()
        t0, seen, used, total, skipped = time.perf_counter(), 0, 0, 0.0, 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=False,
                   disable=not cfg.progress or not accelerator.is_main_process, file=sys.stderr)
        for step, (x, y) in enumerate(bar):
            optimizer.zero_grad(set_to_none=True)
            saved = [b.clone() for b in stats]
            loss = loss_fn(model(x), y)
            accelerator.backward(loss)
            value = loss.item()
            n = len(y) * accelerator.num_processes  # every process takes its own slice of the batches
            seen += n
            if guard and not (_grads_finite(params) if check_grads else math.isfinite(value)):
                skipped += 1
                for b, s in zip(stats, saved):
                    b.copy_(s)
                if accelerator.is_main_process:
                    tqdm.write(f"warning: epoch {epoch + 1} step {step + 1}: non-finite loss or gradient "
                               f"({precision}); step skipped", file=sys.stderr)
                continue
            optimizer.step()
            if math.isfinite(value):
                used += n
                total += value * n
            bar.set_postfix(loss=f"{value:.3f}", img_s=f"{seen / (time.perf_counter() - t0):.0f}")
        bar.close()
        if skipped > len(loader) // 2:
            raise AugurError(f"training diverged: {skipped} of {len(loader)} steps of epoch {epoch + 1} had a "
                             f"non-finite loss or gradient ({precision}); try a lower --lr, or --precision fp32 "
                             "(see the README on bf16 on CPU). The last finished epoch's checkpoint is kept")
        row = {"epoch": epoch + 1, "loss": total / max(used, 1), "images": seen, "skipped_steps": skipped,
               "images_per_second": seen / max(time.perf_counter() - t0, 1e-9)}
        if evaluate is not None:
            row.update(evaluate(accelerator.unwrap_model(model)))
        history.append(row)
        _checkpoint(accelerator, ckpt, epoch + 1, history)
    return history


def _grads_finite(params) -> bool:
    import torch

    # A NaN or inf anywhere makes its tensor's sum non-finite; unlike a norm's squares, a sum of sane
    # gradients cannot overflow into a false alarm.
    sums = [p.grad.sum() for p in params if p.grad is not None]
    return not sums or bool(torch.isfinite(torch.stack(sums)).all())


def _checkpoint(accelerator, ckpt: Path, epoch: int, history: list[dict[str, Any]]) -> None:
    """State first, then progress.json names it: a kill between the two resumes from the older one.

    Under `accelerate launch` every process saves its part of the state (save_state must run on all),
    and only the main process moves folders, with barriers so that nobody writes into a folder being
    renamed.
    """
    tmp = ckpt / "state.tmp"
    main = accelerator.is_main_process
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if main:
        old = ckpt / "state.old"
        shutil.rmtree(old, ignore_errors=True)
        if (ckpt / "state").exists():
            (ckpt / "state").rename(old)
        tmp.rename(ckpt / "state")
        write_json(ckpt / "progress.json", {"epoch": epoch, "history": history})
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def config_dict(cfg: TrainConfig) -> dict[str, Any]:
    """What a run records of its settings: the precision it really trains in, not "auto"."""
    d = asdict(cfg)
    d.pop("progress")
    d["precision"] = resolve_precision(cfg.precision)
    return d
