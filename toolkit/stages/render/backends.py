"""Render backends, a registry: each loads a pipeline from a resolved model folder for a device and
precision. Adding one (TensorRT, OpenVINO, ...) is one decorated class."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ...core.errors import AugurError
from ...core.registry import Registry
# Scheduler names a card's render defaults may give (diffusers class names are accepted as well).
from ...models.render_defaults import SCHEDULERS

BACKENDS = Registry("backend", instantiate=True)


def set_scheduler(pipe, name: str | None) -> None:
    """Replace the folder's scheduler by the card's (its config kept), e.g. LCM for an LCM-LoRA."""
    if not name:
        return
    import diffusers

    cls_name = SCHEDULERS.get(name, name)
    cls = getattr(diffusers, cls_name, None)
    if cls is None:
        raise AugurError(f"unknown scheduler '{name}'; use one of {', '.join(SCHEDULERS)} or a diffusers class name")
    if type(pipe.scheduler).__name__ != cls_name:
        pipe.scheduler = cls.from_config(pipe.scheduler.config)


def check_model_index(folder: Path) -> None:
    """A pipeline folder's model_index.json, checked before diffusers reads it: a JSON object whose
    `_class_name` is a diffusers pipeline and whose components name classes of diffusers or transformers.
    Nothing is imported from anywhere else (diffusers itself would only fail later, with a traceback)."""
    import importlib
    import importlib.util

    from ...core.files import read_json

    f = Path(folder) / "model_index.json"
    index = read_json(f)
    if not isinstance(index, dict) or not isinstance(index.get("_class_name"), str):
        raise AugurError(f"{f}: not a diffusers model index (a JSON object with a '_class_name')")
    import diffusers

    pipeline = getattr(diffusers, index["_class_name"], None) if not index["_class_name"].startswith("_") else None
    if not (isinstance(pipeline, type) and issubclass(pipeline, diffusers.DiffusionPipeline)):
        raise AugurError(f"{f}: '_class_name' {index['_class_name']!r} is not a diffusers pipeline")
    for key, value in index.items():
        if key.startswith("_") or not isinstance(value, list) or value == [None, None]:
            continue  # settings such as requires_safety_checker, and absent components
        if not (len(value) == 2 and all(isinstance(v, str) for v in value) and all(v.isidentifier() for v in value)):
            raise AugurError(f"{f}: component '{key}' is not a [library, class] pair")
        library, name = value
        # diffusers, transformers, or one of diffusers' own pipeline modules (stable_diffusion's safety checker)
        module = (library if library in ("diffusers", "transformers") else
                  f"diffusers.pipelines.{library}" if importlib.util.find_spec(f"diffusers.pipelines.{library}")
                  else None)
        if module is None:
            raise AugurError(f"{f}: component '{key}' names {library}.{name}; only diffusers and transformers "
                             "classes are loaded")
        if name.startswith("_") or not isinstance(getattr(importlib.import_module(module), name, None), type):
            raise AugurError(f"{f}: component '{key}' names {library}.{name}, which {library} does not have")


def pickled_components(folder: Path, safety_checker: bool = False) -> list[str]:
    """The components of a pipeline folder whose weights are only pickled `.bin` files (a folder from before
    safetensors, such as miniSD's): diffusers and transformers read those with torch.load(weights_only=True),
    which unpickles tensors and refuses anything else (tests/test_models.py feeds it a pickle that runs code).
    The safety checker counts only where it is loaded."""
    out = []
    for sub in sorted(p for p in Path(folder).iterdir() if p.is_dir() and (safety_checker or p.name != "safety_checker")):
        names = [p.name for p in sub.iterdir() if p.is_file()]
        if not any(n.endswith(".safetensors") for n in names) and any(n.endswith(".bin") for n in names):
            out.append(sub.name)
    return out


@contextmanager
def _quiet_pickle_fallback(on: bool):
    """diffusers logs an *error* ("... Defaulting to unsafe serialization") for each component it reads from
    .bin: misleading here, since it reads them with weights_only=True; pickled_components records which."""
    from diffusers.utils import logging as dlog

    level = dlog.get_verbosity()
    if on:
        dlog.set_verbosity(dlog.CRITICAL)
    try:
        yield
    finally:
        dlog.set_verbosity(level)


def detect_variant(folder: Path) -> str | None:
    """A folder holding only `*.fp16.safetensors` weights must be loaded with variant='fp16'."""
    weights = [p.name for p in folder.glob("*/*.safetensors")]
    if not weights or any(n.count(".") == 1 for n in weights):
        return None
    variants = {n.split(".")[-2] for n in weights if n.count(".") >= 2}
    return sorted(variants)[0] if len(variants) == 1 else None


def load_lora(pipe, path: Path) -> None:
    """Fuse a LoRA file. `weight_name` is given: without it diffusers refuses offline (HF_HUB_OFFLINE=1)."""
    pipe.load_lora_weights(str(path.parent), weight_name=path.name, local_files_only=True)
    pipe.fuse_lora()
    pipe.unload_lora_weights()  # the fused weights stay; the adapter layers go


def image_to_image(pipe, path: Path):
    """The text-to-image pipeline's image-to-image sibling, from the same components (no second load):
    diffusers' AutoPipelineForImage2Image maps LCM, SD, SD-Turbo and SD + LCM-LoRA pipelines to theirs."""
    import warnings

    with warnings.catch_warnings():
        # its mapping imports every pipeline module; Kolors' text encoder calls the deprecated torch.jit.script
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
        from diffusers import AutoPipelineForImage2Image

    try:
        return AutoPipelineForImage2Image.from_pipe(pipe)
    except ValueError:
        raise AugurError(f"{path}: diffusers has no image-to-image pipeline for {type(pipe).__name__}; render it "
                         "from text (without --init-images)") from None


class Backend:
    """What a backend loads and what it can do: the renderer and the settings ask these, never its name."""

    kind = "diffusers"  # the model kind it loads (a card's kind; a folder of that layout)
    torch_modules = True  # its pipeline is torch modules: cuDNN's settings, tensors out, .bin weights, the levers
    fuses_lora = True  # it fuses a card's LoRA at load (ONNX: the export has it fused already)
    # the switches of RenderConfig only a torch pipeline has (refused with another backend: no silent no-op)
    levers = ("tiny_vae", "attention_slicing", "vae_slicing", "vae_tiling", "cpu_offload", "compile", "fuse_qkv",
              "safety_checker")

    def load(self, path: Path, defaults: dict[str, Any], cfg, device: str, precision: str, variant: str | None,
             lora: Path | None, tiny_vae: Path | None):
        raise NotImplementedError

    def folder_kind(self, folder: Path) -> str:
        """The model kind a pipeline folder holds (an ONNX export has unet/model.onnx)."""
        return "onnx" if (Path(folder) / "unet" / "model.onnx").is_file() else "diffusers"

    def precisions(self, device: str) -> tuple[str, ...]:
        return ("fp32", "fp16", "bf16")


@BACKENDS.register("torch")
class TorchBackend(Backend):
    def load(self, path, defaults, cfg, device, precision, variant, lora, tiny_vae):
        from diffusers import AutoencoderTiny, DiffusionPipeline

        from ...core.device import torch_dtype

        from ...core.noise import quiet_libraries

        dtype = torch_dtype(precision)
        check_model_index(path)
        checker = {} if cfg.safety_checker else {"safety_checker": None, "requires_safety_checker": False}
        if cfg.safety_checker:
            index = json.loads((path / "model_index.json").read_text(encoding="utf-8"))
            if (index.get("safety_checker") or [None])[0] is None:
                raise AugurError(f"{path}: this pipeline has no safety checker; drop --safety-checker")
        # safetensors only, unless a component has nothing else (then each reads its safetensors where it has
        # them, else its .bin with weights_only=True)
        pickled = pickled_components(path, cfg.safety_checker)
        with quiet_libraries(), _quiet_pickle_fallback(bool(pickled)):
            pipe = DiffusionPipeline.from_pretrained(str(path), torch_dtype=dtype, local_files_only=True,
                                                     use_safetensors=None if pickled else True, variant=variant,
                                                     **checker)
        set_scheduler(pipe, defaults.get("scheduler"))
        if cfg.init_images is not None:
            pipe = image_to_image(pipe, path)
        if lora is not None:
            load_lora(pipe, lora)
        if tiny_vae is not None:
            pipe.vae = AutoencoderTiny.from_pretrained(str(tiny_vae), torch_dtype=dtype, local_files_only=True)
        if cfg.attention_slicing:
            pipe.enable_attention_slicing()
        if cfg.vae_slicing:
            pipe.vae.enable_slicing()
        if cfg.vae_tiling:
            pipe.vae.enable_tiling()
        if cfg.cpu_offload and device == "cuda":
            pipe.enable_model_cpu_offload()
        else:
            pipe = pipe.to(device)
        speed_up(pipe, cfg)
        return pipe


def denoiser(pipe):
    """The network the steps run: a UNet (SD, SDXL, LCM), or a transformer (PixArt's DiT) where there is none."""
    unet = getattr(pipe, "unet", None)
    return unet if unet is not None else getattr(pipe, "transformer", None)


def speed_up(pipe, cfg) -> None:
    """The torch levers benchmarks/bench_render.py measures (diffusers' own optimisation guide): fused QKV
    projections, channels-last convolutions, torch.compile (CUDA graphs with its reduce-overhead and
    max-autotune modes). SDPA attention is diffusers' default on torch 2."""
    import torch

    parts = [m for m in (denoiser(pipe), getattr(pipe, "vae", None)) if isinstance(m, torch.nn.Module)]
    if cfg.fuse_qkv:
        for m in parts:
            if hasattr(m, "fuse_qkv_projections"):
                m.fuse_qkv_projections()
    if cfg.channels_last:
        for m in parts:
            m.to(memory_format=torch.channels_last)
    if cfg.compile:
        import torch._inductor.config as inductor

        # inference only: constant-fold the weights into the graph (oneDNN prepacks them on a CPU)
        inductor.freezing = True
        mode = None if cfg.compile_mode == "default" else cfg.compile_mode
        for name in ("unet", "transformer"):
            if getattr(pipe, name, None) is not None:
                setattr(pipe, name, torch.compile(getattr(pipe, name), mode=mode))
        if getattr(pipe, "vae", None) is not None:
            pipe.vae.decoder = torch.compile(pipe.vae.decoder, mode=mode)


@BACKENDS.register("onnx")
class OnnxBackend(Backend):
    kind = "onnx"
    torch_modules = False
    fuses_lora = False
    levers = ()

    def precisions(self, device: str) -> tuple[str, ...]:
        return ("fp32",)

    def load(self, path, defaults, cfg, device, precision, variant, lora, tiny_vae):
        import onnxruntime as ort
        from optimum.onnxruntime import ORTDiffusionPipeline

        provider = "CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider"
        if provider not in ort.get_available_providers():
            raise AugurError("onnxruntime here has no CUDA execution provider: uninstall `onnxruntime`, then install "
                             "`onnxruntime-gpu` built for your CUDA (docs/install.md), or use --device cpu")
        options = None
        if provider == "CUDAExecutionProvider":
            import torch

            # Under `accelerate launch` each process has set its own current GPU; the EP would take GPU 0.
            options = {"device_id": torch.cuda.current_device()}
        if cfg.init_images is not None:  # optimum's image-to-image class of the exported pipeline
            from optimum.onnxruntime import ORTPipelineForImage2Image

            try:
                pipe = ORTPipelineForImage2Image.from_pretrained(str(path), provider=provider,
                                                                 provider_options=options)
            except ValueError as e:
                if "can't find a pipeline" not in str(e):
                    raise
                raise AugurError(f"{path}: optimum has no ONNX image-to-image pipeline for this model; render it "
                                 "with --backend torch") from None
        else:
            pipe = ORTDiffusionPipeline.from_pretrained(str(path), provider=provider, provider_options=options)
        # The export already holds the card's scheduler and fused LoRA (see onnx_export.py); a
        # folder exported elsewhere still gets the card's scheduler here.
        set_scheduler(pipe, defaults.get("scheduler"))
        return pipe
