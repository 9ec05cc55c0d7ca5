"""`augur models export-onnx`: optimum exports a diffusers pipeline *as its card defines it*; onnxruntime
quantizes its UNet.

The card's render defaults decide what is exported: its scheduler (an LCM-LoRA card renders with
LCMScheduler) and its LoRA, fused into the UNet before export. So `NAME-onnx` draws what `NAME` draws
on torch, and the recorded parity compares the same pipeline on two backends. The export is registered
as a card of its own (NAME-onnx, NAME-onnx-int8, NAME-onnx-int8-conv) that remembers what it came from.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ...core import paths
from ...core.errors import AugurError
from ...core.files import sha256_tree
from ...models import cards, store

PARITY_PROMPT = {"id": "parity", "class": "parity", "domain": "parity",
                 "prompt": "a lighthouse on a cliff, watercolor"}

# Dynamic quantization recipes, one pass per weight type: onnxruntime's CPU MatMulInteger is fastest with
# int8 weights, while its ConvInteger takes only uint8 weights (an int8 Conv graph would not load).
# "int8" touches the attention and feed-forward layers only and stays closest to fp32; "int8-conv"
# also quantizes the convolutions, where most of a UNet's time goes: on a full-size SD 1.5 UNet on
# CPU it runs ~2x faster than "int8", with ~4x larger output error (docs/benchmarks.md).
QUANTIZE: dict[str, list[tuple[tuple[str, ...], str]]] = {
    "int8": [(("MatMul", "Gemm"), "QInt8")],
    "int8-conv": [(("Conv",), "QUInt8"), (("MatMul", "Gemm"), "QInt8")],
}


def _as_card_defines(card: cards.ModelCard, path: Path, work: Path) -> Path:
    """The folder to export: the card's own, or (scheduler or LoRA to apply) a re-saved pipeline."""
    defaults = card.render_defaults
    if not defaults.get("lora") and not defaults.get("scheduler"):
        return path
    from diffusers import DiffusionPipeline

    from .backends import detect_variant, load_lora, set_scheduler

    pipe = DiffusionPipeline.from_pretrained(str(path), local_files_only=True, use_safetensors=True,
                                             variant=card.variant or detect_variant(path), safety_checker=None,
                                             requires_safety_checker=False)
    set_scheduler(pipe, defaults.get("scheduler"))
    if defaults.get("lora"):
        _, lora_path, _ = store.ensure(defaults["lora"])
        load_lora(pipe, lora_path)
    pipe.save_pretrained(str(work), safe_serialization=True)
    return work


def export_folder(card: cards.ModelCard, src: Path, dest: Path) -> None:
    from optimum.exporters.onnx import main_export

    tmp = dest.parent / f".{dest.name}.tmp"
    staged = dest.parent / f".{dest.name}.source.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(staged, ignore_errors=True)
    try:
        folder = _as_card_defines(card, src, staged)
        main_export(str(folder), output=tmp, task="text-to-image", do_validation=False)
    except AugurError:
        raise
    except Exception as e:  # optimum raises many types; the user needs the message
        shutil.rmtree(tmp, ignore_errors=True)
        raise AugurError(f"ONNX export of {src} failed ({e.__class__.__name__}: {str(e).splitlines()[0][:200]})") from None
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def _quantize_unet(onnx_dir: Path, dest: Path, mode: str = "int8") -> None:
    """A copy of the export whose UNet weights are dynamically quantized (QUANTIZE[mode])."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = dest.parent / f".{dest.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(onnx_dir, tmp, ignore=shutil.ignore_patterns("unet"))
    (tmp / "unet").mkdir()
    for f in (onnx_dir / "unet").iterdir():
        if f.name != "model.onnx" and not f.name.startswith("model.onnx_data"):
            shutil.copy2(f, tmp / "unet" / f.name)
    big = any(p.name.startswith("model.onnx_data") for p in (onnx_dir / "unet").iterdir())
    src = onnx_dir / "unet" / "model.onnx"
    passes = QUANTIZE[mode]
    for i, (ops, weight_type) in enumerate(passes):
        out = tmp / "unet" / ("model.onnx" if i == len(passes) - 1 else f"pass{i}.onnx")
        quantize_dynamic(str(src), str(out), weight_type=getattr(QuantType, weight_type),
                         op_types_to_quantize=list(ops), use_external_data_format=big)
        if src.parent == tmp / "unet":
            for f in src.parent.glob(f"{src.name}*"):
                f.unlink()
        src = out
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def parity(torch_model: str, onnx_model: str, size: int | None = None) -> float:
    """Max absolute pixel difference (0-255) between torch fp32 and ONNX renders of one prompt and seed."""
    import numpy as np

    from .config import RenderConfig
    from .pipeline import Renderer, Unit, resolve_model

    images = []
    for backend, name in (("torch", torch_model), ("onnx", onnx_model)):
        cfg = RenderConfig(model=name, backend=backend, device="cpu", precision="fp32", size=size, quiet=True)
        r = Renderer(resolve_model(name, backend), cfg)
        images.append(r([Unit("parity-0", PARITY_PROMPT, 0, 1234)])[0].astype(np.int16))
    return float(np.abs(images[0] - images[1]).max())


def export_onnx(name: str, quantize: str | None = None, parity_size: int | None = None) -> dict[str, Any]:
    card, path, sha = store.ensure(name)
    if card.kind != "diffusers":
        raise AugurError(f"model '{name}' is a {card.kind} model; export-onnx takes a diffusers pipeline")
    if card.extra.get("onnx") is False:  # the card says why (`onnx_why`)
        why = card.extra.get("onnx_why", "optimum-onnx cannot export it")
        raise AugurError(f"model '{name}' cannot be exported to ONNX ({why}); render it with --backend torch")
    if quantize not in (None, *QUANTIZE):
        raise AugurError(f"--quantize {quantize}: choose one of {', '.join(QUANTIZE)}")
    defaults = card.render_defaults
    lora_sha = store.ensure(defaults["lora"])[2] if defaults.get("lora") else None
    source_id = {"sha256": sha, "scheduler": defaults.get("scheduler"), "lora_sha256": lora_sha}
    results: dict[str, Any] = {}
    onnx_name = f"{name}-onnx"
    onnx_dir = paths.model_store() / onnx_name
    existing = cards.load_cards().get(onnx_name)
    reused = bool(existing and existing.extra.get("exported_from_sha256") == sha
                  and existing.extra.get("exported_as") == source_id and (onnx_dir / "model_index.json").exists())
    if not reused:
        export_folder(card, path, onnx_dir)
    # (card name, folder, description suffix, extra card fields) of each card to (re)register
    targets = [(onnx_name, onnx_dir, "", {})]
    if reused and parity_size is None and "parity_max_pixel_diff" in existing.extra:
        # Adding a quantized copy to an earlier export: its hash and parity are on record already.
        targets = []
        results[onnx_name] = {"path": str(onnx_dir), "sha256": existing.sha256,
                              "parity_max_pixel_diff": existing.extra["parity_max_pixel_diff"]}
    if quantize:
        q_name = f"{name}-onnx-{quantize}"
        q_dir = paths.model_store() / q_name
        _quantize_unet(onnx_dir, q_dir, quantize)
        targets.append((q_name, q_dir, f" ({quantize} UNet)",
                        {"quantized": quantize, "quantized_ops": [list(ops) for ops, _ in QUANTIZE[quantize]]}))
    for target_name, target_dir, suffix, extra in targets:
        what = " with its LoRA fused" if lora_sha else ""
        new = cards.ModelCard(name=target_name, kind="onnx", description=f"ONNX export of {name}{what}{suffix}",
                              source={"path": str(target_dir)}, license=card.license,
                              extra={"exported_from": name, "exported_from_sha256": sha, "exported_as": source_id,
                                     **extra})
        new.sha256 = sha256_tree(target_dir)
        cards.save_user_card(new)
        store.verify(new, target_dir, use_record=False, repin=True)
        diff = parity(name, target_name, parity_size)
        new.extra["parity_max_pixel_diff"] = diff
        cards.save_user_card(new)
        results[target_name] = {"path": str(target_dir), "sha256": new.sha256, "parity_max_pixel_diff": diff}
    return results
