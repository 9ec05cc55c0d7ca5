"""CPU render speed on full-size SD 1.5-architecture components with random weights, and what each
speed lever does to the pixels.

Speed does not depend on weight values, so random weights measure what real weights would; the pixel
error against torch fp32 on random weights is an indication only (real weights give other images, and
may be more or less sensitive). Each configuration runs in its own process, side by side in one run:

- seconds per image through the whole `render` stage at 256 and 512 px, 4 LCM steps, best of
  --repeats, and the speed-up over torch fp32 with the default layout (channels-first);
- the per-image error against those torch fp32 images: mean and max absolute difference in 1/255
  steps, and PSNR;
- peak resident memory of each process.

Configurations (name = levers joined by '+'): fp32, bf16 (precision), cl (channels-last), compile
(torch.compile, inductor), taesd (the tiny autoencoder decodes), onnx (optimum + onnxruntime, fp32).

    python benchmarks/bench_render.py [--sizes 256,512] [--repeats 2] [--workdir DIR]
        [--configs fp32,fp32+cl,fp32+cl+compile,bf16,bf16+cl,bf16+cl+compile,bf16+cl+taesd]

On CUDA (`--device cuda`), in one process on one GPU: plain diffusers eager fp16 (what a user writes:
`pipe(...).images`, then `image.save(path)` per PNG) against the render stage's default path and each
lever (channels-last `cl`, fused QKV `qkv`, `compile`, `taesd`), at 256 and 512 px, batch 1, 8 and 16;
images/s over --images images after a warm-up batch, the mean / max pixel error and PSNR of every
configuration against plain eager fp16 at the same batch size (the same starting noise: CPU generators
per image, as the stage draws it), the start-up time (pipeline load to the first batch written), and
peak GPU memory. Last line: `render cuda default/plain diffusers: X.XX` (512 px, batch 16).

    python benchmarks/bench_render.py --device cuda [--sizes 256,512] [--batches 1,8,16] [--images 32]
        [--levers cl,qkv,cl+qkv,taesd,compile]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STEPS = 4
IMAGES = 2
DEFAULT_CONFIGS = "fp32,fp32+cl,fp32+cl+compile,bf16,bf16+cl,bf16+cl+compile,bf16+cl+taesd"


def build(work: Path) -> None:
    """SD 1.5 shapes (UNet 860M with LCM's guidance embedding, VAE, CLIP ViT-L text encoder) and the
    tiny autoencoder (TAESD's architecture), random init."""
    import torch
    from diffusers import (AutoencoderKL, AutoencoderTiny, LatentConsistencyModelPipeline, LCMScheduler,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from toolkit.models.builders import write_tokenizer

    folder = work / "sd15-random"
    write_tokenizer(folder / "tokenizer")
    tok = CLIPTokenizer.from_pretrained(str(folder / "tokenizer"))
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=768, attention_head_dim=8, time_cond_proj_dim=256)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4)
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    sched = LCMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="leading")
    LatentConsistencyModelPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False).save_pretrained(str(folder))
    AutoencoderTiny().save_pretrained(str(work / "taesd-random"))


def export(work: Path) -> None:
    from toolkit.models import ModelCard
    from toolkit.stages.render.onnx_export import export_folder

    # a card with no render defaults: the folder is exported as it is
    export_folder(ModelCard(name="sd15-random", kind="diffusers"), work / "sd15-random", work / "sd15-random-onnx")


def measure(config: str, size: int, work: Path, repeats: int) -> dict:
    import numpy as np
    from PIL import Image

    from toolkit.core.files import write_jsonl
    from toolkit.models import ModelCard
    from toolkit.stages.render.config import RenderConfig
    from toolkit.stages.render.pipeline import Renderer, Resolved
    from toolkit.stages.render.stage import render

    levers = set(config.split("+"))
    onnx = "onnx" in levers
    path = work / ("sd15-random-onnx" if onnx else "sd15-random")
    card = ModelCard(name=f"sd15-random-{config}", kind="onnx" if onnx else "diffusers")
    cfg = RenderConfig(backend="onnx" if onnx else "torch", device="cpu",
                       precision="bf16" if "bf16" in levers else "fp32", size=size, steps=STEPS, guidance=8.0,
                       batch_size=IMAGES, channels_last="cl" in levers, compile="compile" in levers,
                       tiny_vae=str(work / "taesd-random") if "taesd" in levers else None, quiet=True)
    t0 = time.perf_counter()
    renderer = Renderer(Resolved(card, path, "random-weights", {"scheduler": "lcm"}), cfg)
    rows = [{"id": f"r{i}", "class": "c", "domain": "d", "prompt": f"a photo of thing {i}"} for i in range(IMAGES)]
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        prompts = Path(tmp) / "prompts.jsonl"
        write_jsonl(prompts, rows)
        # a first run pays one-time costs (allocations, oneDNN kernel choice, compiling): not per image
        render(prompts, Path(tmp) / "warm", cfg, renderer=renderer)
        warm = time.perf_counter() - t0
        for k in range(repeats):
            t = time.perf_counter()
            render(prompts, Path(tmp) / f"out{k}", cfg, renderer=renderer)
            times.append(time.perf_counter() - t)
        images = np.stack([np.asarray(Image.open(p).convert("RGB"))
                           for p in sorted((Path(tmp) / "out0").rglob("*.png")) if p.name != "contact_sheet.png"])
    np.save(work / f"images-{config}-{size}.npy", images)
    return {"config": config, "size": size, "sec_per_image": min(times) / IMAGES, "times": times,
            "first_run_s": warm, "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def errors(work: Path, config: str, size: int) -> tuple[float, int, float] | None:
    import numpy as np

    ref, got = work / f"images-fp32-{size}.npy", work / f"images-{config}-{size}.npy"
    if not ref.exists() or not got.exists():
        return None
    a, b = np.load(ref).astype(np.float64), np.load(got).astype(np.float64)
    d = np.abs(a - b)
    mse = float(((a - b) ** 2).mean())
    psnr = float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)
    return float(d.mean()), int(d.max()), psnr


def child(*args: str) -> dict | None:
    res = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if res.returncode != 0:
        print(f"  {' '.join(args)} failed:\n{res.stderr[-2000:]}", file=sys.stderr)
        return None
    lines = [line for line in res.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


def psnr(a, b) -> tuple[float, int, float]:
    import numpy as np

    a, b = a.astype(np.float64), b.astype(np.float64)
    d = np.abs(a - b)
    mse = float(((a - b) ** 2).mean())
    return float(d.mean()), int(d.max()), (float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse))


def cuda_main(args) -> None:
    """The CUDA comparison (see the module docstring), in this process. `--pipeline DIR` measures another
    pipeline folder instead of the full-size random one, and `--dry-run` runs the same code on the CPU in
    fp32 (a quick check that the benchmark itself works, on a machine without a GPU)."""
    import numpy as np
    import torch
    from diffusers import LatentConsistencyModelPipeline
    from PIL import Image

    from toolkit.core.files import write_jsonl
    from toolkit.models import ModelCard
    from toolkit.stages.render.config import RenderConfig
    from toolkit.stages.render.pipeline import Renderer, Resolved
    from toolkit.stages.render.stage import render

    work = Path(args.workdir or tempfile.mkdtemp(prefix="augur-bench-render-"))
    dev, dtype_name = ("cpu", "fp32") if args.dry_run else ("cuda", "fp16")
    dtype = torch.float32 if args.dry_run else torch.float16
    sync = (lambda: None) if args.dry_run else torch.cuda.synchronize
    peak = (lambda: 0.0) if args.dry_run else (lambda: torch.cuda.max_memory_allocated() / 2**30)
    model_dir = Path(args.pipeline) if args.pipeline else work / "sd15-random"
    if not args.pipeline and not (model_dir / "model_index.json").exists():
        t = time.perf_counter()
        build(work)
        print(f"built the full-size SD 1.5 LCM pipeline (random weights) in {time.perf_counter() - t:.0f} s",
              file=sys.stderr)
    if "taesd" in args.levers and not (work / "taesd-random" / "config.json").exists():
        from diffusers import AutoencoderTiny

        AutoencoderTiny().save_pretrained(str(work / "taesd-random"))
    sizes = [int(x) for x in args.sizes.split(",")]
    batches = [int(x) for x in args.batches.split(",")]
    n = args.images
    prompts = [f"a photo of thing number {i} in a field" for i in range(n)]
    seeds = list(range(1000, 1000 + n))
    out: list[dict] = []
    plain_images: dict[tuple[int, int], np.ndarray] = {}

    # plain diffusers, eager fp16
    pipe = LatentConsistencyModelPipeline.from_pretrained(str(model_dir), torch_dtype=dtype)
    pipe = pipe.to(dev)
    pipe.set_progress_bar_config(disable=True)

    def plain(size: int, bs: int, folder: Path, keep: bool) -> float:
        folder.mkdir(parents=True, exist_ok=True)
        got = []
        pipe(prompts[:bs], num_inference_steps=STEPS, guidance_scale=8.0, height=size, width=size)  # warm-up
        sync()
        t = time.perf_counter()
        for k in range(0, n, bs):
            ims = pipe(prompts[k:k + bs], num_inference_steps=STEPS, guidance_scale=8.0, height=size, width=size,
                       generator=[torch.Generator("cpu").manual_seed(s) for s in seeds[k:k + bs]]).images
            for i, im in enumerate(ims):
                im.save(folder / f"{k + i}.png")
                if keep:
                    got.append(np.asarray(im))
        dt = time.perf_counter() - t
        if keep:
            plain_images[(size, bs)] = np.stack(got)
        return n / dt

    for size in sizes:
        for bs in batches:
            rate = plain(size, bs, work / f"plain-{size}-{bs}", True)
            out.append({"config": "plain diffusers", "size": size, "batch": bs, "img_s": rate, "err": (0, 0, float("inf"))})
            print(f"plain diffusers {size}px batch {bs}: {rate:.2f} img/s", file=sys.stderr)
    plain_peak = peak()
    pipe = None
    if not args.dry_run:
        torch.cuda.empty_cache()

    card = ModelCard(name="sd15-random", kind="diffusers")
    rows = [{"id": f"r{i}", "class": "c", "domain": "d", "prompt": p} for i, p in enumerate(prompts)]
    prompts_file = work / "prompts.jsonl"
    write_jsonl(prompts_file, rows)
    warm_file = work / "warm.jsonl"
    levers = ["default"] + [x for x in args.levers.split(",") if x]

    def stage(lever: str, size: int, bs: int) -> dict:
        parts = set(lever.split("+"))
        cfg = RenderConfig(backend="torch", device=dev, precision=dtype_name, size=size, steps=STEPS, guidance=8.0,
                           batch_size=bs, seed=0, quiet=True, channels_last="cl" in parts, fuse_qkv="qkv" in parts,
                           compile="compile" in parts, tiny_vae=str(work / "taesd-random") if "taesd" in parts else None)
        if not args.dry_run:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        renderer = Renderer(Resolved(card, model_dir, "random-weights", {"scheduler": "lcm"}), cfg)
        # the stage's own seeds are (run seed, row, index); the comparison needs plain diffusers' noise
        import toolkit.stages.render.stage as st

        original = st.plan
        st.plan = lambda r, ipp, seed, shard: [st.Unit(f"{row['id']}-0", row, 0, s) for row, s in zip(r, seeds)]
        try:
            write_jsonl(warm_file, rows[:bs])
            render(warm_file, work / f"warm-{lever}-{size}-{bs}", cfg, renderer=renderer)  # one batch
            startup = time.perf_counter() - t0
            folder = work / f"stage-{lever}-{size}-{bs}"
            sync()
            t = time.perf_counter()
            render(prompts_file, folder, cfg, renderer=renderer)
            dt = time.perf_counter() - t
        finally:
            st.plan = original
        got = np.stack([np.asarray(Image.open(folder / "d" / "c" / f"r{i}-0.png").convert("RGB")) for i in range(n)])
        ref = plain_images.get((size, bs))
        del renderer
        if not args.dry_run:
            torch.cuda.empty_cache()
        return {"config": f"stage {lever}", "size": size, "batch": bs, "img_s": n / dt, "startup_s": startup,
                "peak_gib": peak(),
                "err": psnr(ref, got) if ref is not None and ref.shape == got.shape else None}

    for lever in levers:
        for size in sizes:
            for bs in batches if lever == "default" else [batches[-1]]:
                if lever != "default" and "compile" in lever and size != sizes[-1]:
                    continue  # compiling costs minutes per shape: the largest size only
                r = stage(lever, size, bs)
                out.append(r)
                print(f"{r['config']} {size}px batch {bs}: {r['img_s']:.2f} img/s", file=sys.stderr)
    where = "CPU (dry run)" if args.dry_run else torch.cuda.get_device_name()
    print(f"{where}, torch {torch.__version__}; {model_dir.name} (random weights), {dtype_name}, "
          f"{STEPS} steps, {n} images per figure after a warm-up; plain diffusers peak {plain_peak:.1f} GiB")
    print(f"{'config':<26} {'size':>5} {'batch':>5} {'img/s':>7} {'vs plain':>8} {'mean err':>9} {'max err':>8} "
          f"{'PSNR dB':>8} {'start-up s':>10} {'peak GiB':>8}")
    for r in out:
        base = next(b for b in out if b["config"] == "plain diffusers" and b["size"] == r["size"]
                    and b["batch"] == r["batch"])
        e = r["err"]
        e_txt = f"{e[0]:>9.3f} {e[1]:>8d} {e[2]:>8.1f}" if e else f"{'-':>9} {'-':>8} {'-':>8}"
        print(f"{r['config']:<26} {r['size']:>5} {r['batch']:>5} {r['img_s']:>7.2f} {r['img_s'] / base['img_s']:>7.2f}x "
              f"{e_txt} {r.get('startup_s', float('nan')):>10.1f} {r.get('peak_gib', float('nan')):>8.2f}")
    size, bs = sizes[-1], batches[-1]
    d = next(r for r in out if r["config"] == "stage default" and r["size"] == size and r["batch"] == bs)
    p = next(r for r in out if r["config"] == "plain diffusers" and r["size"] == size and r["batch"] == bs)
    print(f"render cuda default/plain diffusers: {d['img_s'] / p['img_s']:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--batches", default="1,8,16", help="CUDA: batch sizes")
    ap.add_argument("--images", type=int, default=32, help="CUDA: images per figure")
    ap.add_argument("--levers", default="cl,qkv,cl+qkv,taesd", help="CUDA: levers beside the default path")
    ap.add_argument("--pipeline", help="CUDA: a pipeline folder to measure instead of the full-size random one")
    ap.add_argument("--dry-run", action="store_true", help="CUDA's comparison on the CPU in fp32 (checks the script)")
    ap.add_argument("--sizes", default="256,512")
    ap.add_argument("--configs", default=DEFAULT_CONFIGS)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workdir", help="keep the random models here (default: a temp dir)")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if (args.device == "cuda" or args.dry_run) and not args.child:
        cuda_main(args)
        return
    if args.child:
        kind, *rest = args.child
        if kind == "build":
            build(Path(rest[0]))
            print("{}")
        elif kind == "export":
            export(Path(rest[0]))
            print("{}")
        else:
            config, size, work, repeats = rest
            print(json.dumps(measure(config, int(size), Path(work), int(repeats))))
        return
    work = Path(args.workdir or tempfile.mkdtemp(prefix="augur-bench-render-"))
    configs = args.configs.split(",")
    if "fp32" not in configs:
        configs.insert(0, "fp32")  # the reference of every ratio and error
    if not (work / "sd15-random" / "model_index.json").exists():
        print("building full-size SD 1.5-architecture pipeline with random weights ...", file=sys.stderr)
        child("--child", "build", str(work))
    if any("onnx" in c for c in configs) and not (work / "sd15-random-onnx" / "model_index.json").exists():
        print("exporting to ONNX (minutes) ...", file=sys.stderr)
        child("--child", "export", str(work))
    results = []
    for size in (int(s) for s in args.sizes.split(",")):
        for config in configs:
            print(f"measuring {config} at {size}px ...", file=sys.stderr)
            r = child("--child", "measure", config, str(size), str(work), str(args.repeats))
            if r:
                results.append(r)
    import platform

    print(f"CPU ({platform.processor() or platform.machine()}), {os.cpu_count()} cores, torch threads "
          f"{os.environ.get('OMP_NUM_THREADS', 'default')}; random weights, {STEPS} LCM steps, {IMAGES} images, "
          f"best of {args.repeats} runs after a warm-up run")
    print(f"{'config':<18} {'size':>5} {'s/image':>8} {'vs fp32':>8} {'mean err':>9} {'max err':>8} {'PSNR dB':>8} "
          f"{'first run s':>11} {'peak GiB':>9}")
    best = {}
    for r in results:
        base = next((b for b in results if b["size"] == r["size"] and b["config"] == "fp32"), None)
        speed = base["sec_per_image"] / r["sec_per_image"] if base else float("nan")
        err = errors(work, r["config"], r["size"])
        e = f"{err[0]:>9.3f} {err[1]:>8d} {err[2]:>8.1f}" if err else f"{'-':>9} {'-':>8} {'-':>8}"
        print(f"{r['config']:<18} {r['size']:>5} {r['sec_per_image']:>8.2f} {speed:>7.2f}x {e} "
              f"{r['first_run_s']:>11.1f} {r['peak_rss_gib']:>9.2f}")
        if r["config"] != "fp32" and speed > best.get(r["size"], (0.0, ""))[0]:
            best[r["size"]] = (speed, r["config"])
    for size, (speed, config) in sorted(best.items()):
        print(f"best at {size} px: {config}, {speed:.2f}x torch fp32")


if __name__ == "__main__":
    main()
