"""Training throughput of every stage against a bare PyTorch loop on the same device, side by side in one run.

    python benchmarks/bench_train.py --device cpu|cuda [--sizes 32,224] [--repeats 2] [--no-shared-core]

For each size (32 px with resnet18, 224 px with resnet50) and each stage, the stage's own images/s (the
steady rate its loop records after the first checkpoint interval, which pays one-time kernel choice)
against a bare loop doing the same step on data already on the device (random tensors; no data
loading, augmentation, checkpointing, evaluation, non-finite guard or logging), at the stage's
precision (bf16 autocast where the GPU has it, fp32 on a CPU):

- pretrain: one batch of 64 (32 px) or 32 (224 px), AdamW;
- dg ERM and dg CORAL: one minibatch of 16 (32 px) or 8 (224 px) from each of 5 training environments,
  Adam (ERM concatenates them; CORAL, as DomainBed, passes each environment through the network on its
  own and adds the mean and covariance penalty over the pairs);
- cl replay: batches of 64 / 32 of a task's images plus the memory, AdamW.

Data: the built-in digits (1,797 images, in memory), no augmentation on either side. On a GPU the
bare loop's step time is the GPU's own (a synthetic batch already there), printed with the
utilisation the driver reports. Goals: >= 0.9 of the bare loop on a CPU, >= 0.8 on a GPU.
Last lines: `worst stage/bare ratio: X.XX`, then on a CPU the shared-core case (a busy neighbour
process started and stopped here; the default thread choice against the best one):
`shared-core default/best: X.XX`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

ENVS = 5
CASES = {32: ("resnet18", 64, 16, 60, 20), 224: ("resnet50", 32, 8, 16, 8)}  # arch, batch, per-env batch, steps, freq


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def bare_loop(arch: str, size: int, batch: int, envs: int, steps: int, device: str, precision: str,
              optimizer: str, coral: bool = False) -> tuple[float, float]:
    """(images/s, ms per step) of a plain loop on pre-built device tensors, after 5 warm-up steps."""
    from toolkit.learn import backbones

    torch.manual_seed(0)
    model = backbones.create(arch, size)
    head = torch.nn.Linear(backbones.num_features(model), 10)
    net = torch.nn.Sequential(model, head).to(device).train()
    opt = (torch.optim.Adam if optimizer == "adam" else torch.optim.AdamW)(net.parameters(), lr=1e-4)
    x = torch.randn(max(512, batch * envs * 2), 3, size, size, device=device)
    y = torch.randint(0, 10, (len(x),), device=device)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    autocast = torch.autocast(device, dtype=dtype, enabled=precision != "fp32")
    g = torch.Generator(device=device).manual_seed(0)
    n = batch * envs
    t0 = None
    for step in range(steps + 5):
        if step == 5:
            _sync(device)
            t0 = time.perf_counter()
        idx = torch.randint(0, len(x), (n,), device=device, generator=g)
        opt.zero_grad(set_to_none=True)
        with autocast:
            if coral:
                # DomainBed's CORAL step: one featurizer pass per environment, then the pairwise penalty
                parts = [model(xi) for xi in x[idx].split(batch)]
                loss = sum(torch.nn.functional.cross_entropy(head(f), yi) for f, yi in zip(parts, y[idx].split(batch)))
                loss = loss / envs
                parts = [f.float() for f in parts]
                pen = 0
                for i in range(envs):
                    for j in range(i + 1, envs):
                        a, b = parts[i], parts[j]
                        ca, cb = a - a.mean(0), b - b.mean(0)
                        pen = pen + (a.mean(0) - b.mean(0)).pow(2).mean() + (
                            (ca.T @ ca) / (len(a) - 1) - (cb.T @ cb) / (len(b) - 1)).pow(2).mean()
                loss = loss + pen / (envs * (envs - 1) / 2)
            else:
                loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
        loss.backward()
        opt.step()
    _sync(device)
    dt = time.perf_counter() - t0
    return steps * n / dt, 1000 * dt / steps


def steady(records: list[dict]) -> float:
    rates = [r["images_per_second"] for r in records]
    return float(np.mean(rates[1:] if len(rates) > 1 else rates))


def stage_rate(stage: str, work: Path, size: int, k: int) -> float:
    from toolkit.core.files import read_json, read_jsonl

    arch, batch, env_batch, steps, freq = CASES[size]
    out = work / f"{stage}-{size}-{k}"
    if stage == "pretrain":
        from toolkit.stages.pretrain.config import PretrainConfig
        from toolkit.stages.pretrain.stage import pretrain

        epochs = max(2, -(-steps * batch // 1797))
        card = pretrain(PretrainConfig(data="digits", backbone=arch, image_size=size, batch_size=batch,
                                       epochs=epochs, quiet=True), out).data
        return steady(card["history"])
    if stage in ("dg-ERM", "dg-CORAL"):
        from toolkit.stages.dg.config import DGConfig
        from toolkit.stages.dg.stage import run_dg

        run_dg(DGConfig(data="digits", algorithm=stage[3:], test_domains=["75"], steps=steps, checkpoint_freq=freq,
                        batch_size=env_batch, image_size=size, backbone=arch, augment=False,
                        selection=["training-domain"], quiet=True), out)
        (records,) = [read_json(p)["records"] for p in out.glob("runs/*/records.json")]
        return steady(records)
    from toolkit.stages.cl.config import CLConfig
    from toolkit.stages.cl.stage import run_cl

    run_cl(CLConfig(strategy="replay", backbone=arch, image_size=size, batch_size=batch, epochs=2, quiet=True,
                    initial_classes=2, increment=2), out)
    rows = read_jsonl(out / "results.jsonl")
    rates = [r["images_per_second"] for r in rows[1:] if r.get("images_per_second")]  # tasks with a memory
    return float(np.mean(rates))


BARE = {"pretrain": ("adamw", False, 1), "dg-ERM": ("adam", False, ENVS), "dg-CORAL": ("adam", True, ENVS),
        "cl-replay": ("adamw", False, 1)}


def gpu_utilisation() -> str:
    try:
        return f"{torch.cuda.utilization()}%"
    except Exception:  # no NVML here
        return "n/a"


def busy() -> subprocess.Popen:
    """One CPU-bound neighbour process (what a second experiment or an IDE indexing is)."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def shared_core(work: Path) -> tuple[float, dict[int, float]]:
    """dg ERM at 32 px beside one busy neighbour: the default thread choice, and every explicit count."""
    from toolkit.core.device import cpu_count

    def run(threads: int | None, tag: str) -> float:
        env = {**os.environ}
        cmd = [sys.executable, "-m", "cli", "dg", "--test-domains", "75", "--steps", "30", "--checkpoint-freq", "10",
               "--image-size", "32", "--batch-size", "16", "--no-augment", "--selection", "training-domain",
               "--quiet", "--out", str(work / f"shared-{tag}")]
        if threads is not None:
            cmd += ["--threads", str(threads)]
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=Path(__file__).resolve().parent.parent, env=env, check=True, capture_output=True)
        return time.perf_counter() - t0

    neighbour = busy()
    try:
        default = run(None, "default")
        explicit = {n: run(n, f"t{n}") for n in range(1, cpu_count() + 1)}
    finally:
        neighbour.kill()
        neighbour.wait()
    return default, explicit


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    ap.add_argument("--sizes", default=None, help="32,224 (default: both on a GPU, 32 on a CPU)")
    ap.add_argument("--stages", default="pretrain,dg-ERM,dg-CORAL,cl-replay")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-shared-core", action="store_true")
    args = ap.parse_args()
    if args.device == "cpu" and torch.cuda.is_available():
        torch.cuda.is_available = lambda: False  # every stage on the CPU
    from toolkit.core.device import resolve_precision

    precision = resolve_precision("auto", args.device, "train")
    sizes = [int(s) for s in (args.sizes or ("32,224" if args.device == "cuda" else "32")).split(",")]
    stages = args.stages.split(",")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for size in sizes:
            arch, batch, env_batch, steps, _ = CASES[size]
            for stage in stages:
                optimizer, coral, envs = BARE[stage]
                b = batch if envs == 1 else env_batch
                bare, stage_got, ms = [], [], []
                for k in range(args.repeats):
                    rate, step_ms = bare_loop(arch, size, b, envs, max(steps, 20), args.device, precision, optimizer,
                                              coral)
                    bare.append(rate)
                    ms.append(step_ms)
                    stage_got.append(stage_rate(stage, work, size, k))
                    print(f"{size}px {stage} repeat {k + 1}: bare {rate:.0f} img/s, stage {stage_got[-1]:.0f} img/s",
                          file=sys.stderr)
                results.append((size, arch, stage, max(bare), max(stage_got), min(ms)))
        shared = None
        if args.device == "cpu" and not args.no_shared_core:
            print("shared-core case (one busy neighbour) ...", file=sys.stderr)
            shared = shared_core(work)
    name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{name}, precision {precision}, digits, no augmentation; best of {args.repeats} repeats, images/s")
    print(f"{'size':>5} {'backbone':<9} {'stage':<10} {'bare':>8} {'stage':>8} {'ratio':>6} {'bare ms/step':>13}")
    for size, arch, stage, bare, got, ms in results:
        print(f"{size:>5} {arch:<9} {stage:<10} {bare:>8.0f} {got:>8.0f} {got / bare:>6.2f} {ms:>13.1f}")
    if args.device == "cuda":
        print(f"GPU utilisation reported by the driver at the end: {gpu_utilisation()}")
    print(f"worst stage/bare ratio: {min(got / bare for *_, bare, got, _ in results):.2f}")
    if shared is not None:
        default, explicit = shared
        best_n = min(explicit, key=explicit.get)
        print("beside one busy core, dg wall seconds: default " + f"{default:.1f}, " +
              ", ".join(f"--threads {n} {t:.1f}" for n, t in explicit.items()))
        print(f"shared-core default/best: {explicit[best_n] / default:.2f}")


if __name__ == "__main__":
    main()
