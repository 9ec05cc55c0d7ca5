"""Which model renders, loaded once, turning units (one image each) into uint8 arrays.

Reproducibility: each image has its own seed and its own CPU generator, so it never depends on the
other images of its batch through the random numbers. It can still depend on them through the
arithmetic: convolution and matrix kernels pick their blocking by the batch shape, which changes the
rounding (measured on an AMD EPYC: UNet outputs differ by ~1e-6 between batch 1 and 4, enough to
move a few pixels by 1/255). So on a CPU every image is computed in a batch of exactly one: the same
row gives the same bytes whatever --batch-size, shard or process, for a given CPU and thread count.
On CUDA images are computed in batches of --batch-size for speed: they repeat exactly for the same
batch size on the same GPU and software (deterministic cuDNN, its autotuner off), and differ at another
batch size or on another GPU. So on CUDA the batch size and the GPU (name, CUDA, cuDNN and torch
versions) are part of what decides the pixels (`settings`): the manifest records them and a resume or
a shard that differs is refused (stage.py).

The images leave the pipeline as tensors (`output_type="pt"`) and become uint8 where they were made,
so a GPU sends a quarter of the bytes and the host does no per-pixel work; the arithmetic is numpy's
(clip, x255, round half to even), so the pixels are those of the numpy path.
"""

from __future__ import annotations

import inspect
import math
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ... import models
from ...core import threads as core_threads
from ...core.device import pick_device, resolve_precision, torch_threads
from ...core.errors import AugurError
from ...core.digests import tree_digest
from .backends import BACKENDS, denoiser, detect_variant, pickled_components
from .config import RenderConfig


@dataclass(frozen=True)
class Unit:
    """One image to make (a guided one: from `guide`, at `strength`; stages/render/guides.py)."""

    image_id: str
    row: dict[str, Any]
    index: int
    seed: int
    strength: float | None = None
    guide: Any = None


@dataclass
class Resolved:
    card: models.ModelCard
    path: Path
    sha256: str
    defaults: dict[str, Any] = field(default_factory=dict)
    digest_cached: bool = False  # a folder's digest read from the cache (its files' sizes and times unchanged)


def pick_render_model() -> str:
    """'auto': a real diffusion model the user imported or pulled, else the built-in tiny one (noise)."""
    for card in models.load_cards().values():
        if (card.kind == "diffusers" and "builtin" not in card.source and "tiny_of" not in card.source
                and models.local_path(card) is not None):
            return card.name
    return "tiny-lcm"


def resolve_model(name: str, backend: str) -> Resolved:
    """A card (diffusers for torch, its registered ONNX export for onnx) or a pipeline folder."""
    if name == "auto":
        name = pick_render_model()
    p = Path(name).expanduser()
    wants = BACKENDS.get(backend).kind  # the model kind this backend loads
    if p.is_dir():
        kind = BACKENDS.get(backend).folder_kind(p)
        card = models.ModelCard(name=p.name, kind=kind, source={"path": str(p)})
        models.KINDS.get(kind).check(p)
        if kind == "onnx" and wants != "onnx":
            raise AugurError(f"{p} is an ONNX pipeline; use --backend onnx")
        if kind == "diffusers" and wants != "diffusers":
            raise AugurError(f"{p} is a torch pipeline; export it (augur models import NAME {p} --kind diffusers, "
                             "then augur models export-onnx NAME) or use --backend torch")
        digest, cached = tree_digest(p)
        return Resolved(card, p, digest, {}, digest_cached=cached)
    card = models.get_card(name)
    if card.kind not in ("diffusers", "onnx"):
        raise AugurError(f"model '{name}' is a {card.kind} model; render needs a diffusers or onnx pipeline")
    if wants == "onnx" and card.kind == "diffusers":
        export = f"{name}-onnx"
        if export not in models.load_cards():
            raise AugurError(f"model '{name}' has no ONNX export yet; run `augur models export-onnx {name}`")
        card = models.get_card(export)
    if wants == "diffusers" and card.kind == "onnx":
        raise AugurError(f"model '{name}' is an ONNX export; use --backend onnx, or the torch model it came from")
    card, path, sha = models.ensure(card.name)
    defaults = card.render_defaults
    if card.extra.get("exported_from"):
        # The export renders as its source card does (scheduler, steps, guidance, size); the LoRA is fused in.
        source = models.load_cards().get(card.extra["exported_from"])
        defaults = {**(source.render_defaults if source else {}), **defaults}
        defaults.pop("lora", None)
    return Resolved(card, path, sha, defaults)


def _gpu_memory() -> str:
    import torch

    try:
        free, total = torch.cuda.mem_get_info()
        return f"{total / 2**30:.1f} GiB ({free / 2**30:.1f} GiB free)"
    except Exception:  # noqa: BLE001 - only for the message
        return "unknown"


def out_of_memory(model: str, when: str) -> AugurError:
    return AugurError(f"CUDA ran out of memory {when} '{model}' (GPU memory {_gpu_memory()}); try a smaller "
                      "--batch-size, --vae-slicing or --vae-tiling, --attention-slicing, --tiny-vae taesd, or "
                      "--cpu-offload")


class Renderer:
    """Loads the pipeline once and turns units into uint8 HxWx3 images."""

    def __init__(self, resolved: Resolved, cfg: RenderConfig):
        import torch

        self.cfg, self.resolved = cfg, resolved
        self.threads = core_threads.apply(cfg.threads)
        self.backend = BACKENDS.get(cfg.backend)
        self.device = pick_device(cfg.device)
        self.dtype = resolve_precision(cfg.precision, self.device, "render")
        if self.dtype not in self.backend.precisions(self.device):
            raise AugurError(f"--precision {self.dtype} is not available with the {cfg.backend} backend "
                             f"({', '.join(self.backend.precisions(self.device))}; int8 comes from "
                             "`augur models export-onnx NAME --quantize int8`)")
        if cfg.safety_checker and "safety_checker" not in self.backend.levers:  # no option is a silent no-op
            raise AugurError("--safety-checker loads the pipeline's checker with diffusers: use --backend torch")
        if cfg.cpu_offload and self.device != "cuda":  # no option is a silent no-op
            raise AugurError("--cpu-offload moves components between the GPU and the CPU: it needs --device cuda "
                             f"(this run renders on {self.device})")
        if self.device == "cuda" and self.backend.torch_modules:
            # cuDNN's autotuner and its non-deterministic kernels would make the same seed give different
            # images from run to run; inference loses little by pinning them.
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        d = resolved.defaults
        self.guided = cfg.init_images is not None
        # a card may say which strengths and step counts make sense for image-to-image (a one-step model needs
        # steps x strength >= 1); the command line overrides both
        self.strengths = (list(cfg.strength or d.get("strength") or [0.5])) if self.guided else None
        self.negative_prompt = cfg.negative_prompt if cfg.negative_prompt is not None else d.get("negative_prompt", "")
        lora_path, tiny_vae_path = self._extras(resolved, cfg, d)
        self.variant = resolved.card.variant or detect_variant(resolved.path)
        _quiet_libraries()
        try:
            self.pipe = self.backend.load(resolved.path, d, cfg, self.device, self.dtype, self.variant, lora_path,
                                          tiny_vae_path)
        except torch.cuda.OutOfMemoryError:
            raise out_of_memory(resolved.card.name, "while loading") from None
        except AugurError:
            raise
        except (OSError, ValueError, KeyError, RuntimeError, TypeError, AttributeError, pickle.UnpicklingError) as e:
            first = str(e).splitlines()[0][:200].strip() if str(e) else ""
            pickled = ".bin" in first or isinstance(e, pickle.UnpicklingError)
            hint = ("a .bin is read with torch.load(weights_only=True), which refuses one holding more than tensors"
                    if pickled else "is the folder complete?")
            raise AugurError(f"cannot load the pipeline at {resolved.path} ({e.__class__.__name__}: {first}); "
                             f"{hint}") from None
        self.pipe.set_progress_bar_config(disable=True)
        self.scheduler = type(self.pipe.scheduler).__name__
        self.warnings: list[str] = []
        self._choose_steps(cfg, d)
        self.denoising_steps = ({s: check_denoising(self.pipe.scheduler, self.steps, s) for s in self.strengths}
                                if self.guided else {})
        self._read_pipeline(resolved, cfg, d)
        # See the module docstring: one image per computation on a CPU, batches on a GPU.
        self.compute_batch = cfg.batch_size if self.device == "cuda" else 1

    def _extras(self, resolved: Resolved, cfg: RenderConfig, d: dict[str, Any]) -> tuple[Path | None, Path | None]:
        """The card's LoRA (fused at load, or at ONNX export) and --tiny-vae: recorded here, their paths returned."""
        self.lora = self.tiny_vae = None
        lora_path = tiny_vae_path = None
        if d.get("lora") and self.backend.fuses_lora:
            _, lora_path, lora_sha = models.ensure(d["lora"])
            self.lora = {"model": d["lora"], "sha256": lora_sha}
        exported = resolved.card.extra.get("exported_as") or {}
        if exported.get("lora_sha256"):  # an ONNX export carries its card's LoRA fused in
            source = models.load_cards().get(resolved.card.extra.get("exported_from", ""))
            self.lora = {"model": (source.render_defaults.get("lora") if source else None),
                         "sha256": exported["lora_sha256"], "fused_at_export": True}
        if cfg.tiny_vae:
            tv = Path(cfg.tiny_vae)
            if tv.is_dir():
                tiny_vae_path, tv_sha = tv, tree_digest(tv)[0]
            else:
                _, tiny_vae_path, tv_sha = models.ensure(cfg.tiny_vae)
            self.tiny_vae = {"model": str(cfg.tiny_vae), "sha256": tv_sha}
        return lora_path, tiny_vae_path

    def _read_pipeline(self, resolved: Resolved, cfg: RenderConfig, d: dict[str, Any]) -> None:
        """What the loaded pipeline says of itself: its native size, the switches its __call__ takes."""
        scale = getattr(self.pipe, "vae_scale_factor", 8)
        net_cfg = getattr(denoiser(self.pipe), "config", None)  # the UNet's, or a DiT's (PixArt)
        native = (net_cfg.sample_size * scale) if net_cfg is not None and hasattr(net_cfg, "sample_size") else 512
        self.size = cfg.size or int(d.get("size", native))
        params = inspect.signature(self.pipe.__call__).parameters
        self.takes_negative = "negative_prompt" in params
        # PixArt's pipeline "cleans" captions (lower case, no URLs ...) only where bs4 and ftfy happen to be
        # installed, and otherwise warns and skips it: the prompts go in as written, on every machine
        self.call_options = {"clean_caption": False} if "clean_caption" in params else {}
        # PixArt draws at the nearest of its aspect-ratio bins and resizes to the size asked (recorded)
        binning = params.get("use_resolution_binning")
        self.resolution_binning = bool(binning is not None and binning.default is True)
        self.pickled = (pickled_components(resolved.path, cfg.safety_checker)
                        if self.backend.torch_modules and resolved.path.is_dir() else [])

    def _choose_steps(self, cfg: RenderConfig, d: dict[str, Any]) -> None:
        """Steps and guidance: the command line's, else the card's, else what the pipeline class itself
        documents as its defaults (its __call__'s: 50 and 7.5 for Stable Diffusion, 4 and 8.5 for LCM), never
        one model's numbers for another. Where each came from is recorded; fewer than 20 steps for a model
        that no card calls distilled is warned about."""
        params = inspect.signature(self.pipe.__call__).parameters
        cls = type(self.pipe).__name__

        def class_default(name: str):
            p = params.get(name)
            return p.default if p is not None and isinstance(p.default, (int, float)) else None

        card_steps = (self.guided and d.get("img2img_steps")) or d.get("steps")
        steps = [(cfg.steps, "command line"), (card_steps, "card"),
                 (class_default("num_inference_steps"), f"{cls} default"), (4, "LCM's 4")]
        self.steps, steps_from = next((int(v), w) for v, w in steps if v)
        guidance = [(cfg.guidance, "command line"), (d.get("guidance"), "card"),
                    (class_default("guidance_scale"), f"{cls} default"), (1.0, "none")]
        value, guidance_from = next((v, w) for v, w in guidance if v is not None)
        self.guidance = float(value)
        self.defaults_from = {"steps": steps_from, "guidance": guidance_from}
        documented = class_default("num_inference_steps")
        if (not d.get("steps") and self.scheduler != "LCMScheduler" and documented and documented >= 20
                and self.steps < 20):
            self.warnings.append(f"{self.steps} denoising steps for a model no card calls distilled ({cls} documents "
                                 f"{documented}): expect unfinished images; import it with its card's --steps, or "
                                 "give a distilled model (LCM, Turbo)")

    def prompt_tokens(self, prompts: list[str]) -> dict[str, Any] | None:
        """How the pipeline's own tokenizer counts the prompts against its text encoder's limit (CLIP: 77 with
        the start and end tokens): diffusers cuts longer ones and says so through its logger, which Augur keeps
        quiet, so the render says it instead, with the counts. None for a pipeline without a tokenizer."""
        tok = getattr(self.pipe, "tokenizer", None)
        # a pipeline that cuts at its own length (PixArt's T5: max_sequence_length=120) says so in its signature
        own = inspect.signature(self.pipe.__call__).parameters.get("max_sequence_length")
        limit = own.default if own is not None and isinstance(own.default, int) else getattr(tok, "model_max_length", None)
        if tok is None or not isinstance(limit, int) or limit > 100_000:
            return None
        distinct = sorted(set(prompts))
        counts = {p: len(tok(p, truncation=False).input_ids) for p in distinct}
        cut = sorted((p for p in distinct if counts[p] > limit), key=lambda p: -counts[p])
        return {"limit": limit, "prompts": len(distinct), "truncated": len(cut),
                "longest": max(counts.values(), default=0), "example": cut[0][:80] if cut else None}

    def settings(self) -> dict[str, Any]:
        """What decides the pixels: the run's identity and every manifest row carry it."""
        out = {"backend": self.cfg.backend, "device": self.device, "dtype": self.dtype, "scheduler": self.scheduler,
               "steps": self.steps, "guidance": self.guidance, "size": self.size,
               "negative_prompt": self.negative_prompt if self.takes_negative else None,
               "tiny_vae": self.tiny_vae, "lora": self.lora, "variant": self.variant,
               "compute_batch": self.compute_batch,
               "channels_last": self.cfg.channels_last and self.backend.torch_modules,
               "compile": self.cfg.compile}
        if self.guided:  # absent for text-only runs: older folders keep their identity
            out["strengths"] = self.strengths
            out["pipeline"] = type(self.pipe).__name__  # the image-to-image class that drew them
        if self.cfg.fuse_qkv:
            out["fuse_qkv"] = True
        if self.call_options:  # absent for pipelines without these switches: older folders keep their identity
            out.update(self.call_options)
        if self.resolution_binning:
            out["resolution_binning"] = True
        if self.cfg.safety_checker:  # absent when off: older folders keep their identity
            out["safety_checker"] = True
        # slicing, tiling and offloading change float rounding (tested: pixels 1/255 apart), so a folder records
        # them, and a resume with other switches is another run; absent when off (older folders' identities hold)
        for key in ("attention_slicing", "vae_slicing", "vae_tiling", "cpu_offload"):
            if getattr(self.cfg, key):
                out[key] = True
        if self.cfg.compile and self.cfg.compile_mode != "default":
            out["compile_mode"] = self.cfg.compile_mode
        if self.device == "cuda":
            out["gpu"] = gpu_identity()
        return out

    def provenance(self) -> dict[str, Any]:
        """Recorded, not part of the identity: a CPU's results also depend on its thread count."""
        out = {"threads": torch_threads(), "threads_choice": self.threads.why, "defaults_from": self.defaults_from}
        if self.pickled:  # components read from pickled .bin weights (torch.load with weights_only=True)
            out["pickled_weights"] = self.pickled
        return out

    def __call__(self, units: list[Unit]):
        out = []
        start = 0
        while start < len(units):  # compute batches of one strength (a pipeline call takes one)
            end = min(start + self.compute_batch, len(units))
            end = next((i for i in range(start + 1, end) if units[i].strength != units[start].strength), end)
            out += self._compute(units[start:end])
            start = end
        return out

    def _compute(self, units: list[Unit]):
        import numpy as np
        import torch

        kwargs: dict[str, Any] = dict(
            prompt=[u.row["prompt"] for u in units], num_inference_steps=self.steps, guidance_scale=self.guidance,
            height=self.size, width=self.size, output_type="np",
            # CPU generators: the same starting noise on any device
            generator=[torch.Generator("cpu").manual_seed(u.seed) for u in units])
        if self.guided:  # image-to-image draws at its guide's size, which guides.py fits to --size
            from .guides import Guides

            del kwargs["height"], kwargs["width"]
            kwargs.update(image=[Guides.image(u.guide, self.size) for u in units], strength=units[0].strength)
        kwargs.update(self.call_options)
        if self.takes_negative and self.negative_prompt:
            kwargs["negative_prompt"] = [u.row.get("negative_prompt") or self.negative_prompt for u in units]
        torch_out = self.backend.torch_modules  # tensors out, made uint8 where they were computed
        if torch_out:
            kwargs["output_type"] = "pt"
        try:
            with torch.inference_mode(), warnings.catch_warnings():
                # optimum's ONNX image-to-image pipelines read config attributes the old way, once per call
                warnings.filterwarnings("ignore", message="Accessing config attribute", category=FutureWarning)
                images = self.pipe(**kwargs).images
                if torch_out:
                    return self._to_uint8(images, units)
        except torch.cuda.OutOfMemoryError:
            raise out_of_memory(self.resolved.card.name, "while rendering with") from None
        except Exception as e:
            if type(e).__name__ != "InductorError":
                raise
            # seen here: a compile killed mid-write leaves a truncated kernel library in inductor's cache
            from torch._inductor.runtime.cache_dir_utils import cache_dir

            first = str(e).strip().splitlines()[0][:200]
            raise AugurError(f"--compile failed ({first}); a compile killed earlier can leave a broken file in "
                             f"torch's cache: delete {cache_dir()} and re-run (or render without --compile)") from None
        images = np.asarray(images, dtype=np.float32)
        if not np.isfinite(images).all():
            self._non_finite([u for u, im in zip(units, images) if not np.isfinite(im).all()])
        return list((np.clip(images, 0.0, 1.0) * 255.0).round().astype(np.uint8))

    def _to_uint8(self, images, units: list[Unit]):
        """(B, 3, H, W) in [0, 1] on the device -> uint8 H x W x 3 arrays; one check and one copy per batch."""
        import torch

        x = images.float()
        finite = torch.isfinite(x).flatten(1).all(1)
        x = (x.clamp_(0.0, 1.0) * 255.0).round_().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
        finite, x = finite.cpu().numpy(), x.cpu().numpy()
        if not finite.all():
            self._non_finite([u for u, ok in zip(units, finite) if not ok])
        return list(x)

    def _non_finite(self, bad: list[Unit]) -> None:
        # NaN would be written as a black or garbage PNG, with a valid hash, and pass for done.
        ids = [u.image_id for u in bad]
        hint = ("a VAE overflowing in reduced precision does this: try --precision fp32, then re-run to resume"
                if self.dtype != "fp32" else "are the model's weights intact?")
        raise AugurError(f"the model produced non-finite pixels for {', '.join(ids[:3])}{' ...' if len(ids) > 3 else ''}"
                         f" on {self.cfg.backend}/{self.device}/{self.dtype}; nothing was written for them ({hint})")


def check_denoising(scheduler, steps: int, strength: float) -> int:
    """The denoising steps image-to-image takes at `strength`, as diffusers computes them; none is one line.
    Most schedulers run int(steps x strength) of `steps` (the img2img pipelines' get_timesteps); LCM's runs all
    `steps`, spaced over the first int(original_inference_steps x strength) steps of its training schedule, so it
    needs at least `steps` of those (LCMScheduler.set_timesteps)."""
    if type(scheduler).__name__ == "LCMScheduler":
        origin = int(scheduler.config.original_inference_steps * strength)
        if origin < steps:
            raise AugurError(f"--strength {strength:g} leaves no denoising step for {steps} LCM steps (LCM spaces them "
                             f"over {origin} of its {scheduler.config.original_inference_steps} training steps at this "
                             f"strength): raise --strength to at least "
                             f"{steps / scheduler.config.original_inference_steps:g} or lower --steps")
        return steps
    effective = min(int(steps * strength), steps)
    if effective < 1:
        raise AugurError(f"--strength {strength:g} with {steps} step(s) leaves no denoising step (image-to-image runs "
                         f"int(steps x strength) = {effective}): raise --steps to at least {math.ceil(1 / strength)} "
                         "or --strength")
    return effective


def gpu_identity() -> dict[str, Any]:
    """What a GPU's images depend on besides the settings: the GPU and the software that drives it."""
    import torch

    return {"name": torch.cuda.get_device_name(), "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "torch": torch.__version__.split("+")[0]}


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
