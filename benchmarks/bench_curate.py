"""The curate stage's images per second against a bare batched forward pass of the same scorer on the same
images, side by side in one run.

    python benchmarks/bench_curate.py [--device cpu|cuda] [--images 512] [--size 512] [--batch-size 32]
        [--scorer efficientnet-lite0-imagenet] [--workers auto,0,1] [--repeats 3]

The images: a render folder written here (render.json + manifest.jsonl + PNGs in the DomainBed layout, as
`augur render` writes them) of --images seeded random crops of scikit-learn's two sample photos, --size px
square, in 4 classes x 2 domains. The scorer: any scorer card (default the embedded, real ImageNet
EfficientNet-Lite0; `clip-vit-b16-tiny` runs the CLIP path).

- bare: the scorer loaded once, every image decoded and preprocessed beforehand (not timed); timed is
  only `scorer(batch, prompts)` over the batches, the forward pass with its copy to and from the device,
  which is the least any curation costs.
- stage: `run_curate` end to end into an empty folder, what a user waits for: reading, sha256 checks,
  decoding, pHash and preprocessing in DataLoader workers while the scorer runs, near-copies, the
  MiniLM prompt embeddings and Vendi scores, hard links, the dataset card and the contact sheet, the
  scorer's load included. Also its scoring loop alone (the stage's `score_all`, loader included).

Each at the same thread count (the stage's own choice, core/threads.py, unless --threads) and batch size,
best of --repeats rounds (the bare pass best of two in each), alternating, after one untimed stage run
(the first in a process pays one-time imports). Goal: stage >= 0.9 of bare. Last line: `curate/bare scorer: X.XX` (the
stage end to end, at the default --workers).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

CLASSES = ("daisy", "goldfinch", "lighthouse", "teapot")
DOMAINS = ("photo", "sketch")


def make_render_folder(root: Path, n: int, size: int) -> Path:
    """A finished render folder of n PNGs (random crops of the two sample photos), as render writes it."""
    import io

    from PIL import Image
    from sklearn.datasets import load_sample_image

    from toolkit.core.files import sha256_bytes, write_json, write_jsonl

    photos = [load_sample_image(f) for f in ("flower.jpg", "china.jpg")]
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        photo = photos[i % 2]
        h, w = photo.shape[:2]
        side = int(rng.integers(120, min(h, w)))
        y, x = int(rng.integers(0, h - side)), int(rng.integers(0, w - side))
        image = Image.fromarray(photo[y:y + side, x:x + side]).resize((size, size))
        cls, dom = CLASSES[i % len(CLASSES)], DOMAINS[(i // len(CLASSES)) % len(DOMAINS)]
        rel = f"{dom}/{cls}/{i:05d}.png"
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(buf.getvalue())
        rows.append({"image_id": f"{i:05d}", "class": cls, "domain": dom, "prompt": f"a {cls}, {dom} style",
                     "path": rel, "sha256": sha256_bytes(buf.getvalue()), "seed": i})
    write_jsonl(root / "manifest.jsonl", rows)
    write_json(root / "render.json", {"stage": "render", "status": "complete",
                                      "identity": {"model": "bench (sample-photo crops)", "size": size}})
    return root


def bare(source: Path, scorer_name: str, device: str, batch_size: int, repeats: int) -> float:
    """Best images/s of the scorer's forward passes on pre-decoded, preprocessed images."""
    import torch
    from PIL import Image

    from toolkit.core.files import read_jsonl
    from toolkit.stages.curate.scorers import load_scorer

    rows = read_jsonl(source / "manifest.jsonl")
    scorer = load_scorer(scorer_name, sorted(CLASSES), device)
    pixels = []
    for r in rows:
        with Image.open(source / r["path"]) as im:
            pixels.append(scorer.preprocess(im.convert("RGB")))
    batches = [(torch.stack(pixels[i:i + batch_size]), [r["prompt"] for r in rows[i:i + batch_size]])
               for i in range(0, len(rows), batch_size)]
    if device == "cuda":
        batches = [(b.pin_memory(), p) for b, p in batches]
    scorer(*batches[0])  # warm-up: one-time kernel choice
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        for b, p in batches:
            scorer(b, p)  # returns numpy: the device is synchronised
        best = max(best, len(rows) / (time.perf_counter() - t0))
    return best


def stage(source: Path, work: Path, scorer_name: str, device: str, batch_size: int, workers: int | None,
          threads: int | None, tag: str) -> tuple[float, float]:
    """(images/s end to end, images/s of the scoring loop) of one run of the stage into an empty folder."""
    from toolkit.stages.curate import stage as cs
    from toolkit.stages.curate.config import CurateConfig

    out = work / f"out-{tag}"
    shutil.rmtree(out, ignore_errors=True)
    loop = {}
    real_score_all = cs.score_all

    def timed(*a, **k):  # the stage's own loop, timed from outside (it is not changed)
        t0 = time.perf_counter()
        r = real_score_all(*a, **k)
        loop.setdefault("s", time.perf_counter() - t0)
        return r

    cs.score_all = timed
    try:
        cfg = CurateConfig(scorer=scorer_name, device=device, batch_size=batch_size, workers=workers, threads=threads,
                           quiet=True, require_class_agreement=False)
        n = len((source / "manifest.jsonl").read_text().splitlines())
        t0 = time.perf_counter()
        cs.run_curate(source, out, cfg)
        wall = time.perf_counter() - t0
    finally:
        cs.score_all = real_score_all
    return n / wall, n / loop["s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--scorer", default="efficientnet-lite0-imagenet")
    ap.add_argument("--workers", default="auto,0,1", help="the stage's --workers to compare (auto = its default)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()

    import torch

    from toolkit import models
    from toolkit.core import threads as thread_policy

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no GPU is visible")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-curate-"))
    work.mkdir(parents=True, exist_ok=True)
    models.ensure(args.scorer)
    source = make_render_folder(work / "render", args.images, args.size)
    choice = thread_policy.apply(args.threads)
    threads = args.threads or choice.threads  # both sides at one thread count
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"{thread_policy.cpu_count()} CPU cores"
    print(f"curate bench: {args.images} PNGs of {args.size} px, scorer {args.scorer}, batch {args.batch_size}, "
          f"{args.device} ({where}), {threads} torch threads ({choice.why if not args.threads else '--threads'})")
    workers = [None if w == "auto" else int(w) for w in args.workers.split(",")]
    # Warm-up, not timed: the first stage in a process pays one-time imports and the MiniLM load (seconds)
    stage(source, work, args.scorer, args.device, args.batch_size, 0, threads, "warm-up")
    best_bare = 0.0
    best = {w: (0.0, 0.0) for w in workers}
    for r in range(args.repeats):
        torch.set_num_threads(threads)
        best_bare = max(best_bare, bare(source, args.scorer, args.device, args.batch_size, 2))
        for w in workers:
            e2e, loop = stage(source, work, args.scorer, args.device, args.batch_size, w, threads, f"{w}-{r}")
            best[w] = (max(best[w][0], e2e), max(best[w][1], loop))
    print(f"{'':28s} {'images/s':>9s} {'/bare':>6s}")
    print(f"{'bare scorer forward':28s} {best_bare:9.2f} {1.0:6.2f}")
    for w in workers:
        label = "auto" if w is None else str(w)
        print(f"{'stage end to end, workers ' + label:28s} {best[w][0]:9.2f} {best[w][0] / best_bare:6.2f}")
        print(f"{'stage scoring loop, workers ' + label:28s} {best[w][1]:9.2f} {best[w][1] / best_bare:6.2f}")
    default = None if None in best else workers[0]
    (work / "bench_curate.json").write_text(json.dumps(
        {"device": args.device, "where": where, "images": args.images, "size": args.size, "threads": threads,
         "bare": best_bare, "stage": {str(w): v for w, v in best.items()}}, indent=1))
    print(f"curate/bare scorer: {best[default][0] / best_bare:.2f}")


if __name__ == "__main__":
    main()
