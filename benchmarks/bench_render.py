"""Render speed and memory on full-size SD 1.5-architecture components with random weights.

Speed does not depend on weight values, so random weights measure what real LCM weights would.
Each configuration runs in its own process (peak memory per configuration), side by side in one run:

- seconds per image at 256 px and 512 px, 4 LCM steps, batch of 2, for torch fp32, torch bf16,
  ONNX fp32, ONNX int8 (dynamically quantized UNet MatMuls) and ONNX int8-conv (convolutions too)
  on CPU;
- the whole `render` stage (PNG encoding, hashing, manifest) against the bare text-encoder + UNet +
  VAE compute on the same batch, pipeline already loaded: goal overhead <= 5 %. The two alternate
  (--repeats times, interleaved) and the best time of each is compared; the paired ratios show the noise;
- peak resident memory of each process.

    python benchmarks/bench_render.py [--sizes 256,512] [--repeats 4] [--workdir DIR]
                                      [--configs torch-fp32,torch-bf16,onnx-fp32,onnx-int8,onnx-int8-conv]

Takes ~60 minutes on a 2-core CPU with the default 4 repeats (the ONNX export of an 860M-parameter
UNet alone takes minutes).
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
BATCH = 2


def build(folder: Path) -> None:
    """SD 1.5 shapes (UNet 860M with LCM's guidance embedding, VAE, CLIP ViT-L text encoder), random init."""
    import torch
    from diffusers import AutoencoderKL, LatentConsistencyModelPipeline, LCMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from toolkit.tiny import _write_tokenizer

    _write_tokenizer(folder / "tokenizer")
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


def model_dir(work: Path, config: str) -> Path:
    backend, dtype = config.split("-", 1)
    if backend == "torch":
        return work / "sd15-random"
    return work / ("sd15-random-onnx" if dtype == "fp32" else f"sd15-random-onnx-{dtype}")


def export(work: Path, configs: list[str]) -> None:
    """optimum's export, then each quantized copy the configurations need, as `augur models export-onnx`."""
    from toolkit.onnx_export import _export, _quantize_unet

    onnx = model_dir(work, "onnx-fp32")
    if not (onnx / "model_index.json").exists():
        _export(model_dir(work, "torch-fp32"), onnx)
    for c in configs:
        if c.startswith("onnx-") and c != "onnx-fp32" and not (model_dir(work, c) / "model_index.json").exists():
            _quantize_unet(onnx, model_dir(work, c), c.split("-", 1)[1])


def measure(config: str, size: int, work: Path, repeats: int) -> dict:
    import numpy as np
    import torch

    from toolkit.fileio import write_jsonl
    from toolkit.render import Renderer, RenderConfig, Resolved, Unit, render
    from toolkit.models import ModelCard

    backend, dtype = config.split("-", 1)
    path = model_dir(work, config)
    card = ModelCard(name=f"sd15-random-{config}", kind="onnx" if backend == "onnx" else "diffusers")
    cfg = RenderConfig(backend=backend, device="cpu", dtype="fp32" if backend == "onnx" else dtype, size=size,
                       steps=STEPS, guidance=8.0, batch_size=BATCH, progress=False)
    renderer = Renderer(Resolved(card, path, "random-weights", {"scheduler": "lcm"}), cfg)
    rows = [{"id": f"r{i}", "class": "c", "domain": "d", "prompt": f"a photo of thing {i}"} for i in range(BATCH)]
    units = [Unit(f"r{i}-0", r, 0, i) for i, r in enumerate(rows)]
    # Warm-up: one-time allocations and kernel choices are not what a long run pays per image.
    renderer.steps = 1
    renderer(units)
    renderer.steps = STEPS
    pipe = renderer.pipe

    def bare() -> None:
        """The compute alone: encode prompts, STEPS UNet evaluations, VAE decode."""
        with torch.inference_mode():
            ids = pipe.tokenizer([r["prompt"] for r in rows], padding="max_length", max_length=77,
                                 truncation=True, return_tensors="pt" if backend == "torch" else "np").input_ids
            if backend == "torch":
                dt = pipe.unet.dtype
                emb = pipe.text_encoder(ids)[0]
                lat = torch.randn(BATCH, 4, size // 8, size // 8, dtype=dt)
                w = torch.randn(BATCH, 256, dtype=dt)
                for t in range(STEPS):
                    lat = pipe.unet(lat, 999 - 250 * t, encoder_hidden_states=emb, timestep_cond=w).sample
                pipe.vae.decode(lat / pipe.vae.config.scaling_factor)
            else:
                emb = pipe.text_encoder(input_ids=torch.from_numpy(np.asarray(ids, dtype=np.int32)))[0]
                lat = torch.randn(BATCH, 4, size // 8, size // 8)
                w = torch.randn(BATCH, 256)
                for t in range(STEPS):
                    ts = torch.tensor(999 - 250 * t, dtype=torch.int64)  # a scalar, as the pipeline passes it
                    lat = pipe.unet(sample=lat, timestep=ts, encoder_hidden_states=emb, timestep_cond=w)[0]
                pipe.vae_decoder(latent_sample=lat)

    # Interleaved repeats, alternating which goes first so a drift of the machine's speed hits both
    # alike; the minimum of each is the estimate (noise on a shared CPU only ever adds time).
    t_bare, t_stage = [], []
    with tempfile.TemporaryDirectory() as tmp:
        prompts = Path(tmp) / "prompts.jsonl"
        write_jsonl(prompts, rows)

        runs = iter(range(2 * repeats))

        def stage() -> None:
            render(prompts, Path(tmp) / f"out{next(runs)}", cfg, renderer=renderer)  # a fresh run each time

        for k in range(repeats):
            for fn, times in ([(bare, t_bare), (stage, t_stage)][::1 if k % 2 == 0 else -1]):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
    return {"config": config, "size": size, "repeats": repeats,
            "sec_per_image": min(t_stage) / BATCH, "bare_sec_per_image": min(t_bare) / BATCH,
            "stage_over_bare": min(t_stage) / min(t_bare),
            "paired_ratios": [s / b for s, b in zip(t_stage, t_bare)], "stage_s": t_stage, "bare_s": t_bare,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def child(*args: str) -> dict | None:
    res = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if res.returncode != 0:
        print(f"  {' '.join(args)} failed:\n{res.stderr[-2000:]}", file=sys.stderr)
        return None
    lines = [l for l in res.stdout.splitlines() if l.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="256,512")
    ap.add_argument("--configs", default="torch-fp32,torch-bf16,onnx-fp32,onnx-int8,onnx-int8-conv")
    ap.add_argument("--repeats", type=int, default=4, help="interleaved stage/bare repeats per configuration")
    ap.add_argument("--workdir", help="keep the random model and exports here (default: a temp dir)")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "build":
            build(Path(rest[0]))
            print("{}")
        elif kind == "export":
            export(Path(rest[0]), rest[1:])
            print("{}")
        else:
            config, size, work, repeats = rest
            print(json.dumps(measure(config, int(size), Path(work), int(repeats))))
        return
    work = Path(args.workdir or tempfile.mkdtemp(prefix="augur-bench-render-"))
    folder = model_dir(work, "torch-fp32")
    configs = args.configs.split(",")
    if not (folder / "model_index.json").exists():
        print("building full-size SD 1.5-architecture pipeline with random weights ...", file=sys.stderr)
        child("--child", "build", str(folder))
    if any(c.startswith("onnx") and not (model_dir(work, c) / "model_index.json").exists() for c in configs):
        print("exporting to ONNX and quantizing (minutes) ...", file=sys.stderr)
        child("--child", "export", str(work), *configs)
    results = []
    for size in (int(s) for s in args.sizes.split(",")):
        for config in configs:
            print(f"measuring {config} at {size}px ...", file=sys.stderr)
            r = child("--child", "measure", config, str(size), str(work), str(args.repeats))
            if r:
                results.append(r)
    print(f"CPU, {os.cpu_count()} cores, random weights, {STEPS} LCM steps, batch {BATCH}, "
          f"best of {args.repeats} interleaved repeats")
    print(f"{'config':<14} {'size':>5} {'s/image':>8} {'vs fp32':>8} {'bare s/img':>10} {'stage/bare':>10} "
          f"{'paired range':>13} {'peak GiB':>9}")
    for r in results:
        base = next((b for b in results if b["size"] == r["size"] and b["config"] == "torch-fp32"), None)
        speed = f"{base['sec_per_image'] / r['sec_per_image']:.2f}x" if base else "-"
        print(f"{r['config']:<14} {r['size']:>5} {r['sec_per_image']:>8.2f} {speed:>8} {r['bare_sec_per_image']:>10.2f} "
              f"{r['stage_over_bare']:>10.3f} {min(r['paired_ratios']):>6.3f}-{max(r['paired_ratios']):.3f} "
              f"{r['peak_rss_gib']:>9.2f}")


if __name__ == "__main__":
    main()
