"""The `render` stage: every prompt row becomes images in the DomainBed layout, plus a manifest.

    OUT/<domain>/<class>/<image_id>.png   (directly a training set)
    OUT/manifest.jsonl                     (one row per image: prompt, seed, model, settings, sha256)
    OUT/render.json                        (what this folder is a run of; another run is refused)
    OUT/contact_sheet.png                  (a grid of samples per class x domain)

Reproducibility: each image has its own seed derived from the run seed, the row id and the image's
index, and its own generator, so an image never depends on which other images share its batch,
shard or run. One more thing makes that hold bit for bit: a convolution over a batch of one takes a
different kernel path than over a batch of two or more (seen with oneDNN on CPU, differences ~1e-6),
so a lone image is rendered beside a copy of itself whose result is dropped.
"""

from __future__ import annotations

import inspect
import io
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from tqdm import tqdm

from . import __version__, models
from .cache import derive_seed, key_of
from .errors import AugurError
from .fileio import (atomic_path, check_identity, read_json, read_jsonl, sha256_bytes, sha256_file, sha256_tree,
                     write_json, write_jsonl)

BACKENDS = ("torch", "onnx")
DTYPES = ("auto", "fp32", "fp16", "bf16")
DEVICES = ("auto", "cpu", "cuda")
REQUIRED_ROW_KEYS = ("id", "class", "domain", "prompt")


@dataclass
class RenderConfig:
    model: str = "tiny-lcm"
    backend: str = "torch"
    device: str = "auto"
    dtype: str = "auto"
    steps: int | None = None  # None: the card's default
    guidance: float | None = None
    size: int | None = None
    batch_size: int = 4
    images_per_prompt: int = 1
    seed: int = 0
    shard: tuple[int, int] = (0, 1)
    negative_prompt: str | None = None
    attention_slicing: bool = False
    vae_slicing: bool = False
    tiny_vae: str | None = None
    progress: bool = True

    def validate(self) -> None:
        if self.backend not in BACKENDS:
            raise AugurError(f"unknown backend '{self.backend}'; choose one of {', '.join(BACKENDS)}")
        if self.dtype not in DTYPES:
            raise AugurError(f"unknown dtype '{self.dtype}'; choose one of {', '.join(DTYPES)}")
        if self.device not in DEVICES:
            raise AugurError(f"unknown device '{self.device}'; choose one of {', '.join(DEVICES)}")
        if self.batch_size < 1 or self.images_per_prompt < 1:
            raise AugurError("--batch-size and --images-per-prompt must be at least 1")
        if self.steps is not None and self.steps < 1:
            raise AugurError("--steps must be at least 1")
        if self.size is not None and (self.size < 8 or self.size % 8):
            raise AugurError("--size must be a positive multiple of 8")
        i, n = self.shard
        if not (n >= 1 and 0 <= i < n):
            raise AugurError(f"--shard must be i/n with 0 <= i < n, got {i}/{n}")


def parse_shard(text: str | None) -> tuple[int, int]:
    if not text:
        return (0, 1)
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise AugurError(f"--shard must look like 0/4, got '{text}'") from None
    return (i, n)


# ----------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class Unit:
    """One image to make."""

    image_id: str
    row: dict[str, Any]
    index: int
    seed: int

    def relpath(self) -> str:
        return f"{_safe(self.row['domain'])}/{_safe(self.row['class'])}/{self.image_id}.png"


def _safe(name: str) -> str:
    name = str(name).replace("/", "_").replace("\\", "_").strip()
    if name in ("", ".", ".."):
        raise AugurError(f"'{name}' cannot be used as a folder name")
    return name


def load_rows(path: Path) -> list[dict[str, Any]]:
    rows = read_jsonl(path)
    if not rows:
        raise AugurError(f"{path}: no prompt rows")
    seen: dict[str, int] = {}
    for lineno, row in enumerate(rows, 1):
        missing = [k for k in REQUIRED_ROW_KEYS if not isinstance(row.get(k), str) or not row[k].strip()]
        if missing:
            raise AugurError(f"{path}:{lineno}: row lacks {', '.join(missing)} (needs {', '.join(REQUIRED_ROW_KEYS)})")
        if row["id"] in seen:
            raise AugurError(f"{path}:{lineno}: id '{row['id']}' repeats line {seen[row['id']]}")
        seen[row["id"]] = lineno
    return rows


def plan(rows: list[dict[str, Any]], cfg: RenderConfig) -> list[Unit]:
    """All images of the run in a fixed order; a shard keeps the ones whose id hashes to it."""
    i, n = cfg.shard
    units = []
    for row in rows:
        for k in range(cfg.images_per_prompt):
            image_id = f"{_safe(row['id'])}-{k}"
            if n == 1 or int(key_of("shard", image_id)[:8], 16) % n == i:
                units.append(Unit(image_id, row, k, derive_seed(cfg.seed, "render", row["id"], k)))
    return units


# ----------------------------------------------------------------------------- model and pipeline
@dataclass
class Resolved:
    card: models.ModelCard
    path: Path
    sha256: str
    defaults: dict[str, Any] = field(default_factory=dict)


def resolve_model(name: str, backend: str) -> Resolved:
    """A card (diffusers for torch, onnx for onnx; a diffusers card's registered export for onnx)."""
    p = Path(name).expanduser()
    if p.is_dir():
        kind = "onnx" if (p / "unet" / "model.onnx").is_file() else "diffusers"
        card = models.ModelCard(name=p.name, kind=kind, source={"path": str(p)})
        models.KINDS[kind].check(p)
        return Resolved(card, p, sha256_tree(p), {})
    card = models.get_card(name)
    if card.kind not in ("diffusers", "onnx"):
        raise AugurError(f"model '{name}' is a {card.kind} model; render needs a diffusers or onnx pipeline")
    if backend == "onnx" and card.kind == "diffusers":
        export = f"{name}-onnx"
        if export not in models.load_cards():
            raise AugurError(f"model '{name}' has no ONNX export yet; run `augur models export-onnx {name}`")
        card = models.get_card(export)
    if backend == "torch" and card.kind == "onnx":
        raise AugurError(f"model '{name}' is an ONNX export; use --backend onnx, or the torch model it came from")
    card, path, sha = models.ensure(card.name)
    defaults = dict(card.extra.get("render", {}))
    if not defaults and card.extra.get("exported_from"):
        defaults = dict(models.get_card(card.extra["exported_from"]).extra.get("render", {}))
    return Resolved(card, path, sha, defaults)


def pick_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise AugurError("--device cuda was asked for but no CUDA GPU is visible to torch")
    return requested


def cpu_supports_bf16() -> bool:
    import torch

    return bool(getattr(torch.backends, "mkldnn", None) and torch.backends.mkldnn.is_available()
                and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def pick_dtype(requested: str, device: str, backend: str) -> str:
    """fp16 on CUDA, fp32 on CPU by default; refuse what the device cannot run."""
    if backend == "onnx":
        if requested not in ("auto", "fp32"):
            raise AugurError(f"--dtype {requested} is not available with the onnx backend here (fp32; "
                             "int8 comes from `augur models export-onnx NAME --quantize int8`)")
        return "fp32"
    if requested == "auto":
        return "fp16" if device == "cuda" else "fp32"
    if requested == "fp16" and device == "cpu":
        raise AugurError("--dtype fp16 is not supported on CPU; use fp32, or bf16 where the CPU has it")
    if requested == "bf16" and device == "cpu" and not cpu_supports_bf16():
        raise AugurError("--dtype bf16: this CPU has no bf16 support; use fp32")
    return requested


class Renderer:
    """Loads the pipeline once and turns batches of units into uint8 images."""

    def __init__(self, resolved: Resolved, cfg: RenderConfig):
        import torch

        self.cfg, self.resolved = cfg, resolved
        self.device = pick_device(cfg.device)
        self.dtype = pick_dtype(cfg.dtype, self.device, cfg.backend)
        if self.device == "cuda" and cfg.backend == "torch":
            # cuDNN's autotuner and its non-deterministic convolution kernels would make the same seed give
            # different images from run to run; inference loses little by pinning them.
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        d = resolved.defaults
        self.steps = cfg.steps or int(d.get("steps", 4))
        self.guidance = float(cfg.guidance if cfg.guidance is not None else d.get("guidance", 1.0))
        self.negative_prompt = cfg.negative_prompt if cfg.negative_prompt is not None else d.get("negative_prompt", "")
        self.tiny_vae: dict[str, str] | None = None
        _quiet_libraries()
        torch_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.dtype]
        try:
            if cfg.backend == "torch":
                self.pipe = self._load_torch(resolved, torch_dtype, d)
            else:
                self.pipe = self._load_onnx(resolved)
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise AugurError(f"cannot load the pipeline at {resolved.path} ({e.__class__.__name__}: "
                             f"{str(e).splitlines()[0][:200]}); is the folder complete?") from None
        self.pipe.set_progress_bar_config(disable=True)
        self.scheduler = type(self.pipe.scheduler).__name__
        scale = getattr(self.pipe, "vae_scale_factor", 8)
        sample = getattr(getattr(self.pipe, "unet", None), "config", None)
        native = (sample.sample_size * scale) if sample is not None and hasattr(sample, "sample_size") else 512
        self.size = cfg.size or int(d.get("size", native))
        self.takes_negative = "negative_prompt" in inspect.signature(self.pipe.__call__).parameters

    def _load_torch(self, resolved: Resolved, torch_dtype, d: dict[str, Any]):
        from diffusers import AutoencoderTiny, DiffusionPipeline, LCMScheduler

        pipe = DiffusionPipeline.from_pretrained(str(resolved.path), torch_dtype=torch_dtype, local_files_only=True,
                                                 use_safetensors=True, safety_checker=None,
                                                 requires_safety_checker=False)
        if d.get("scheduler") == "lcm" and not isinstance(pipe.scheduler, LCMScheduler):
            pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
        if d.get("lora"):
            _, lora_path, lora_sha = models.ensure(d["lora"])
            pipe.load_lora_weights(str(lora_path))
            pipe.fuse_lora()
            self.lora = {"model": d["lora"], "sha256": lora_sha}
        if self.cfg.tiny_vae:
            tv = Path(self.cfg.tiny_vae)
            if tv.is_dir():
                tv_path, tv_sha = tv, sha256_tree(tv)
            else:
                _, tv_path, tv_sha = models.ensure(self.cfg.tiny_vae)
            pipe.vae = AutoencoderTiny.from_pretrained(str(tv_path), torch_dtype=torch_dtype, local_files_only=True)
            self.tiny_vae = {"model": str(self.cfg.tiny_vae), "sha256": tv_sha}
        if self.cfg.attention_slicing:
            pipe.enable_attention_slicing()
        if self.cfg.vae_slicing:
            pipe.vae.enable_slicing()
        return pipe.to(self.device)

    def _load_onnx(self, resolved: Resolved):
        from optimum.onnxruntime import ORTDiffusionPipeline

        if self.cfg.tiny_vae or self.cfg.attention_slicing or self.cfg.vae_slicing:
            raise AugurError("--tiny-vae and the slicing switches apply to the torch backend only")
        provider = "CUDAExecutionProvider" if self.device == "cuda" else "CPUExecutionProvider"
        import onnxruntime as ort

        if provider not in ort.get_available_providers():
            raise AugurError(f"onnxruntime here has no {provider} (install onnxruntime-gpu for CUDA)")
        options = None
        if provider == "CUDAExecutionProvider":
            import torch

            # Under `accelerate launch` each process has set its own current GPU; the EP would take GPU 0.
            options = {"device_id": torch.cuda.current_device()}
        return ORTDiffusionPipeline.from_pretrained(str(resolved.path), provider=provider, provider_options=options)

    def settings(self) -> dict[str, Any]:
        return {"backend": self.cfg.backend, "device": self.device, "dtype": self.dtype, "scheduler": self.scheduler,
                "steps": self.steps, "guidance": self.guidance, "size": self.size,
                "negative_prompt": self.negative_prompt if self.takes_negative else None,
                "tiny_vae": self.tiny_vae, "lora": getattr(self, "lora", None)}

    def __call__(self, units: list[Unit]):
        """uint8 HxWx3 arrays, one per unit."""
        import numpy as np
        import torch

        batch = units if len(units) > 1 else units * 2  # see the module docstring: batch-invariance
        kwargs: dict[str, Any] = dict(
            prompt=[u.row["prompt"] for u in batch], num_inference_steps=self.steps, guidance_scale=self.guidance,
            height=self.size, width=self.size, output_type="np",
            # CPU generators: the same image on any device's run of the same backend
            generator=[torch.Generator("cpu").manual_seed(u.seed) for u in batch])
        if self.takes_negative and self.negative_prompt:
            kwargs["negative_prompt"] = [u.row.get("negative_prompt") or self.negative_prompt for u in batch]
        with torch.inference_mode():
            images = self.pipe(**kwargs).images
        images = np.asarray(images, dtype=np.float32)[: len(units)]
        if not np.isfinite(images).all():
            # NaN would be written as a black or garbage PNG, with a valid hash, and pass for done.
            bad = [u.image_id for u, im in zip(units, images) if not np.isfinite(im).all()]
            hint = ("a VAE overflowing in reduced precision does this: try --dtype fp32, then re-run to resume"
                    if self.dtype != "fp32" else "are the model's weights intact?")
            raise AugurError(f"the model produced non-finite pixels for {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}"
                             f" on {self.cfg.backend}/{self.device}/{self.dtype}; nothing was written for them ({hint})")
        return list((np.clip(images, 0.0, 1.0) * 255.0).round().astype(np.uint8))


def _quiet_libraries() -> None:
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.set_verbosity_error()
    dlog.disable_progress_bar()
    tlog.set_verbosity_error()
    try:
        import onnxruntime as ort

        ort.set_default_logger_severity(3)
    except ImportError:  # pragma: no cover
        pass


# ----------------------------------------------------------------------------- outputs
def png_bytes(array, info: dict[str, Any]) -> bytes:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    meta = PngInfo()
    meta.add_text("augur", json.dumps(info, sort_keys=True))
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", pnginfo=meta)
    return buf.getvalue()


def manifest_name(shard: tuple[int, int]) -> str:
    i, n = shard
    return "manifest.jsonl" if n == 1 else f"manifest-{i}-of-{n}.jsonl"


def read_manifest(path: Path) -> list[dict[str, Any]]:
    """Rows appended so far; a last line torn by a crash is ignored (its image is simply redone)."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def append_rows(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """One write per batch with O_APPEND, then fsync: rows are whole or absent."""
    data = "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rows).encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def done_units(out: Path, units: list[Unit]) -> dict[str, dict[str, Any]]:
    """Manifest rows whose image is on disk with the recorded sha256."""
    wanted = {u.image_id for u in units}
    done = {}
    for name in sorted(p.name for p in out.glob("manifest*.jsonl")):
        for row in read_manifest(out / name):
            iid = row.get("image_id")
            if iid in wanted and iid not in done:
                p = out / row.get("path", "")
                if p.is_file() and sha256_file(p) == row.get("sha256"):
                    done[iid] = row
    return done


def render(prompts: Path, out: Path, cfg: RenderConfig | None = None, renderer: Renderer | None = None
           ) -> dict[str, Any]:
    """Render a prompts file into OUT; resumable, shardable. Returns the run summary."""
    cfg = cfg or RenderConfig()
    cfg.validate()
    t0 = time.perf_counter()
    prompts, out = Path(prompts), Path(out)
    rows = load_rows(prompts)
    units = plan(rows, cfg)
    resolved = resolve_model(cfg.model, cfg.backend) if renderer is None else None
    if renderer is None:
        renderer = Renderer(resolved, cfg)
    else:
        resolved = renderer.resolved
    identity = {"prompts_sha256": sha256_file(prompts), "model": resolved.card.name, "model_sha256": resolved.sha256,
                "images_per_prompt": cfg.images_per_prompt, "seed": cfg.seed, **renderer.settings()}
    check_identity(out, "render.json", identity, "use another --out, or delete that folder", key="identity")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "render.json", {"identity": identity, "prompts": str(prompts.resolve()),
                                     "toolkit_version": __version__})
    manifest = out / manifest_name(cfg.shard)
    done = done_units(out, units)
    todo = [u for u in units if u.image_id not in done]
    base = {"model": resolved.card.name, "model_sha256": resolved.sha256, **renderer.settings(),
            "run_seed": cfg.seed, "toolkit_version": __version__}
    bar = tqdm(total=len(units), initial=len(units) - len(todo), desc="render", unit="img",
               disable=not cfg.progress, file=sys.stderr)
    t_render = time.perf_counter()
    for start in range(0, len(todo), cfg.batch_size):
        batch = todo[start: start + cfg.batch_size]
        arrays = renderer(batch)
        new_rows = []
        for u, arr in zip(batch, arrays):
            info = {"image_id": u.image_id, "row_id": u.row["id"], "class": u.row["class"], "domain": u.row["domain"],
                    "prompt": u.row["prompt"], "seed": u.seed, "index": u.index, **base}
            if renderer.takes_negative and renderer.negative_prompt:
                info["negative_prompt"] = u.row.get("negative_prompt") or renderer.negative_prompt
            data = png_bytes(arr, info)
            target = out / u.relpath()
            with atomic_path(target) as tmp:
                tmp.write_bytes(data)
            new_rows.append({**info, "path": u.relpath(), "sha256": sha256_bytes(data)})
        append_rows(manifest, new_rows)
        done.update({r["image_id"]: r for r in new_rows})
        bar.update(len(batch))
        bar.set_postfix(img_s=f"{(start + len(batch)) / max(time.perf_counter() - t_render, 1e-9):.2f}")
    bar.close()
    # Canonical order once complete, whatever the interruptions: the unit order.
    write_jsonl(manifest, [done[u.image_id] for u in units])
    if cfg.shard[1] == 1:
        contact_sheet(out, [done[u.image_id] for u in units])
    wall = time.perf_counter() - t0
    rendered = len(todo)
    return {"images": len(units), "rendered": rendered, "resumed": len(units) - rendered, "wall_seconds": wall,
            "images_per_second": rendered / max(time.perf_counter() - t_render, 1e-9) if rendered else 0.0,
            "manifest": str(manifest),
            "line": (f"render: {len(units)} images ({rendered} new, {len(units) - rendered} already done) "
                     f"with {resolved.card.name} on {renderer.cfg.backend}/{renderer.device}/{renderer.dtype}, "
                     f"{renderer.steps} steps, {renderer.size}px; {wall:.1f} s → {manifest}")}


def merge(out: Path) -> dict[str, Any]:
    """Merge shard manifests (manifest-i-of-n.jsonl) into manifest.jsonl after checking every image."""
    out = Path(out)
    shards = sorted(out.glob("manifest-*-of-*.jsonl"))
    if not shards:
        raise AugurError(f"{out}: no shard manifests (manifest-i-of-n.jsonl) to merge")
    ns = {int(p.stem.rsplit("-", 1)[1]) for p in shards}
    if len(ns) != 1:
        raise AugurError(f"{out}: shard manifests of different splits ({', '.join(map(str, sorted(ns)))}) cannot merge")
    (n,) = ns
    have = {int(p.stem.split("-")[1]) for p in shards}
    missing = sorted(set(range(n)) - have)
    if missing:
        raise AugurError(f"{out}: shard(s) {', '.join(map(str, missing))} of {n} are missing")
    info = read_json(out / "render.json")
    rows = load_rows(Path(info["prompts"]))
    identity = info["identity"]
    cfg = RenderConfig(images_per_prompt=identity["images_per_prompt"], seed=identity["seed"])
    units = plan(rows, cfg)
    by_id: dict[str, dict[str, Any]] = {}
    for p in shards:
        for row in read_manifest(p):
            by_id.setdefault(row["image_id"], row)
    absent = [u.image_id for u in units if u.image_id not in by_id]
    if absent:
        raise AugurError(f"{out}: {len(absent)} image(s) not rendered yet, e.g. {absent[0]}; finish every shard first")
    for u in units:
        row = by_id[u.image_id]
        if sha256_file(out / row["path"]) != row["sha256"]:
            raise AugurError(f"{out / row['path']}: sha256 does not match its manifest row")
    merged = [by_id[u.image_id] for u in units]
    write_jsonl(out / "manifest.jsonl", merged)
    contact_sheet(out, merged)
    return {"images": len(merged), "shards": n, "line": f"render merge: {len(merged)} images from {n} shards → "
                                                           f"{out / 'manifest.jsonl'}"}


def contact_sheet(out: Path, rows: list[dict[str, Any]], thumb: int = 96, per_class: int = 8) -> Path:
    """One row per class, one column per domain (first image of each), labelled."""
    from PIL import Image, ImageDraw

    classes: dict[str, dict[str, str]] = {}
    for r in rows:
        classes.setdefault(r["class"], {}).setdefault(r["domain"], r["path"])
    cols = min(per_class, max((len(d) for d in classes.values()), default=1))
    label_w, label_h = 120, 14
    sheet = Image.new("RGB", (label_w + cols * thumb, max(1, len(classes)) * (thumb + label_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for ri, (cls, domains) in enumerate(classes.items()):
        y = ri * (thumb + label_h)
        draw.text((4, y + thumb // 2), cls[:18], fill="black")
        for ci, (domain, path) in enumerate(list(domains.items())[:cols]):
            with Image.open(out / path) as im:
                tile = im.convert("RGB").resize((thumb, thumb), Image.NEAREST if im.width < thumb else Image.BILINEAR)
            x = label_w + ci * thumb
            sheet.paste(tile, (x, y))
            draw.text((x + 2, y + thumb), domain[:16], fill="black")
    target = out / "contact_sheet.png"
    with atomic_path(target) as tmp:
        sheet.save(tmp, format="PNG")
    return target
