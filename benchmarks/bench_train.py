"""Training throughput of the shared loop (`pretrain`, `dg`) against a bare forward/backward loop, side by
side, and the DataLoader-fed throughput on a folder of 224 px JPEGs.

1. RotatedDigits, resnet18, 32 px, no augmentation on either side. The bare loop is plain PyTorch over
   pre-built tensors (no data loading, checkpointing, evaluation or non-finite-step check), with the
   step the stage takes: `pretrain` one batch of 64; `dg` DomainBed's step, one minibatch of 16 from each
   of the 5 training environments, concatenated as ERM does (80 images). Goal: >= 0.90 of the bare loop.
   Each repeat runs bare, pretrain and dg in a rotated order; the best repeat of each is compared (noise
   only slows a run down) and the per-repeat ratios show the spread. The stage figure is its own
   images/s over training steps after the first checkpoint interval (which pays one-time kernel choice).
   DomainBed's augmentation (on by default in `dg`) is measured too, as its own line.
2. A DomainBed-layout folder of 224 px JPEGs (the digits, upscaled): images/s of the DataLoader alone
   (decode, augmentation, normalisation; the workers `dg` picks for a folder that does not fit in memory),
   of a bare resnet18 step at 224 px, and of `dg` training on the folder.

    python benchmarks/bench_train.py [--repeats 3] [--precisions fp32,bf16] [--jpeg-images 600]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from toolkit.core.files import read_json  # noqa: E402
from toolkit.learn import backbones, data  # noqa: E402
from toolkit.stages.dg.config import DGConfig  # noqa: E402
from toolkit.stages.dg.stage import run_dg  # noqa: E402
from toolkit.stages.pretrain.config import PretrainConfig  # noqa: E402
from toolkit.stages.pretrain.stage import pretrain  # noqa: E402

SIZE, PT_BATCH, DG_BATCH, ENVS = 32, 64, 16, 5


def bare_loop(image_size: int, batch: int, steps: int, lora: bool, precision: str,
              x: torch.Tensor | None = None, y: torch.Tensor | None = None) -> float:
    """images/s of a plain AdamW loop on random batches of pre-built tensors (after 5 warm-up steps)."""
    if x is None:
        x = torch.randn(1024, 3, image_size, image_size)
        y = torch.randint(0, 10, (1024,))
    torch.manual_seed(0)
    model = backbones.create("resnet18", image_size)
    if lora:
        model = backbones.add_lora(model, "resnet18", 8)
    head = torch.nn.Linear(backbones.num_features(model), 10)
    net = torch.nn.Sequential(model, head)
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    net.train()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    g = torch.Generator().manual_seed(0)
    t0 = None
    for step in range(steps + 5):
        if step == 5:
            t0 = time.perf_counter()
        idx = torch.randint(0, len(x), (batch,), generator=g)
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss = loss_fn(net(x[idx]), y[idx])
        loss.backward()
        opt.step()
    return steps * batch / (time.perf_counter() - t0)


def steady(records: list[dict]) -> float:
    rates = [r["images_per_second"] for r in records]
    return float(np.mean(rates[1:] if len(rates) > 1 else rates))


def pretrain_rate(tmp: Path, lora: bool, precision: str, k: int) -> float:
    cfg = PretrainConfig(data="digits", backbone="resnet18", image_size=SIZE, batch_size=PT_BATCH, epochs=4,
                         lora=lora, precision=precision, quiet=True)
    card = pretrain(cfg, tmp / f"pt-{lora}-{precision}-{k}")
    return steady(card["history"])


def dg_rate(tmp: Path, lora: bool, precision: str, k: int, augment: bool = False, data_dir: str = "digits",
            size: int = SIZE, batch: int = DG_BATCH, steps: int = 80, freq: int = 20) -> float:
    out = tmp / f"dg-{lora}-{precision}-{augment}-{size}-{k}"
    cfg = DGConfig(data=data_dir, test_domains=[data.load(data_dir, report=False).domains[-1].name]
                   if data_dir != "digits" else ["75"], steps=steps, checkpoint_freq=freq, batch_size=batch,
                   image_size=size, backbone="resnet18", lora=lora, precision=precision, augment=augment,
                   selection=["training-domain"], quiet=True)
    run_dg(cfg, out)
    (records,) = [read_json(p)["records"] for p in out.glob("runs/*/records.json")]
    return steady(records)


def jpeg_folder(root: Path, n: int) -> Path:
    """Two domains of the digits as 224 px JPEGs (DomainBed layout)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    for i in range(n):
        img = Image.fromarray((255 - d.images[i] * 16).clip(0, 255).astype(np.uint8)).convert("RGB")
        img = img.resize((224, 224), Image.BICUBIC)
        folder = root / ("a" if i % 2 else "b") / str(d.target[i])
        folder.mkdir(parents=True, exist_ok=True)
        img.save(folder / f"{i}.jpg", quality=90)
    return root


def loader_rate(folder: Path) -> tuple[float, int]:
    from toolkit.learn.loaders import EpochBatches, ImageSet, default_workers, loader
    from toolkit.learn.transforms import data_config

    ds = data.load(str(folder), report=False)
    items = ds.pooled()
    dc = data_config(backbones.create("resnet18", 224), 224)
    workers = default_workers(False, len(items), 224)
    images = ImageSet(items, dc, augment=True)
    batches = EpochBatches(len(items), 32, 0, "bench")
    t0 = time.perf_counter()
    n = 0
    for x, _ in loader(images, batches, 0, batches.steps_per_epoch, workers):
        n += len(x)
    return n / (time.perf_counter() - t0), workers


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--jpeg-images", type=int, default=600)
    ap.add_argument("--no-jpeg", action="store_true")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for precision in args.precisions.split(","):
            for lora in (False, True):
                mode = f"{'LoRA' if lora else 'full'} {precision}"
                runs = {
                    "bare-pt": lambda k: bare_loop(SIZE, PT_BATCH, 60, lora, precision),
                    "pretrain": lambda k: pretrain_rate(tmp, lora, precision, k),
                    "bare-dg": lambda k: bare_loop(SIZE, DG_BATCH * ENVS, 60, lora, precision),
                    "dg": lambda k: dg_rate(tmp, lora, precision, k),
                    "dg+augment": lambda k: dg_rate(tmp, lora, precision, k, augment=True),
                }
                got: dict[str, list[float]] = {name: [] for name in runs}
                for k in range(args.repeats):
                    names = list(runs)
                    for name in names[k % len(names):] + names[:k % len(names)]:  # rotate who goes first
                        print(f"{mode} repeat {k + 1}/{args.repeats}: {name}", file=sys.stderr)
                        got[name].append(runs[name](k))
                rows.append((mode, got))
        jpeg = None
        if not args.no_jpeg:
            print("224 px JPEG folder ...", file=sys.stderr)
            folder = jpeg_folder(tmp / "jpegs", args.jpeg_images)
            lr, workers = loader_rate(folder)
            bare224 = bare_loop(224, 32, 8, False, "fp32")
            dg224 = dg_rate(tmp, False, "fp32", 0, augment=True, data_dir=str(folder), size=224, batch=16,
                            steps=12, freq=4)
            jpeg = (lr, workers, bare224, dg224)

    print(f"resnet18, RotatedDigits, {SIZE}px, CPU {torch.get_num_threads()} threads, best of {args.repeats} "
          f"interleaved repeats (training images/s); goal >= 0.90 of the bare loop")
    print(f"{'mode':<10} {'bare 64':>8} {'pretrain':>9} {'ratio':>6} {'per repeat':>16} {'bare 5x16':>9} {'dg':>7} "
          f"{'ratio':>6} {'per repeat':>16} {'dg+augment':>10}")
    for mode, got in rows:
        line = f"{mode:<10}"
        for bare, stage, w in (("bare-pt", "pretrain", 9), ("bare-dg", "dg", 7)):
            b, s = got[bare], got[stage]
            paired = " ".join(f"{x / y:.2f}" for x, y in zip(s, b))
            line += f" {max(b):>{8 if bare == 'bare-pt' else 9}.0f} {max(s):>{w}.0f} {max(s) / max(b):>6.2f} {paired:>16}"
        line += f" {max(got['dg+augment']):>10.0f}"
        print(line)
    if jpeg:
        lr, workers, bare224, dg224 = jpeg
        print(f"224 px JPEG folder ({args.jpeg_images} images): DataLoader alone (decode + DomainBed augmentation, "
              f"{workers} worker(s)) {lr:.0f} img/s; bare resnet18 step at 224 px {bare224:.1f} img/s; "
              f"dg on the folder {dg224:.1f} img/s ({dg224 / bare224:.2f} of the bare step)")
    print(f"peak resident memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
