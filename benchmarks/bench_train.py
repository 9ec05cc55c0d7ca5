"""Training throughput of `pretrain` and `dg` against a bare forward/backward loop, side by side.

Same model (resnet18), same batch size, same images (RotatedDigits): the bare loop is a plain
PyTorch loop over pre-built tensors with no data loading, checkpointing or evaluation. Goal: the
stages reach >= 0.9 of the bare loop's images/s. Also prints the peak resident memory.

    python benchmarks/bench_train.py [--image-size 32] [--batch-size 64] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from toolkit import backbones, data  # noqa: E402
from toolkit.dg import DGConfig, run_dg  # noqa: E402
from toolkit.pretrain import pretrain  # noqa: E402
from toolkit.train import Classifier, TrainConfig  # noqa: E402


def bare_loop(image_size: int, batch_size: int, epochs: int, lora: bool) -> float:
    ds = data.rotated_digits()
    n = sum(len(d.labels) for d in ds.domains)
    items = data.ImageSet([(d, np.arange(len(d.labels))) for d in ds.domains], image_size)
    x = torch.stack([items[i][0] for i in range(n)])
    y = torch.tensor([items[i][1] for i in range(n)])
    torch.manual_seed(0)
    bb = backbones.create("resnet18", image_size)
    if lora:
        bb = backbones.add_lora(bb, "resnet18")
    model = Classifier.build(bb, 10)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    rates = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(n)
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
        rates.append(n / (time.perf_counter() - t0))
    return steady(rates)


def steady(rates: list[float]) -> float:
    """Images/s after the first epoch, which pays one-time kernel selection and allocation."""
    return float(np.mean(rates[1:] if len(rates) > 1 else rates))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    cfg = dict(image_size=args.image_size, batch_size=args.batch_size, epochs=args.epochs, progress=False)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for lora in (False, True):
            # Bare loop before and after the stages: the machine's speed drifts; use the mean.
            bare_before = bare_loop(args.image_size, args.batch_size, args.epochs, lora)
            card = pretrain("digits", Path(tmp) / f"pt{lora}", cfg=TrainConfig(lora=lora, **cfg))
            pre = steady([h["images_per_second"] for h in card["history"]])
            out = Path(tmp) / f"dg{lora}"
            run_dg("digits", out, DGConfig(test_domains=["75"], train=TrainConfig(lora=lora, **cfg)))
            (progress,) = out.glob("trials/*/progress.json")
            dg = steady([h["images_per_second"] for h in json.loads(progress.read_text())["history"]])
            bare = (bare_before + bare_loop(args.image_size, args.batch_size, args.epochs, lora)) / 2
            rows.append(("LoRA" if lora else "full", bare, pre, dg))
    print(f"resnet18, RotatedDigits, {args.image_size}px, batch {args.batch_size}, CPU {torch.get_num_threads()} threads")
    print(f"{'mode':<5} {'bare img/s':>10} {'pretrain':>9} {'ratio':>6} {'dg':>7} {'ratio':>6}   (goal >= 0.90)")
    for mode, bare, pre, dg in rows:
        print(f"{mode:<5} {bare:>10.0f} {pre:>9.0f} {pre / bare:>6.2f} {dg:>7.0f} {dg / bare:>6.2f}")
    print(f"peak resident memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
