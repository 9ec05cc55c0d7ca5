"""timm backbones, LoRA adapters through peft, and saving/loading them safely (safetensors only).

A registry of families gives each backbone its sensible LoRA targets; adding one is one entry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import AugurError
from .fileio import atomic_path, sha256_file


@dataclass(frozen=True)
class Family:
    timm_name: str
    lora_targets: str  # a regex over module names, as peft accepts
    default_image_size: int


BACKBONES: dict[str, Family] = {
    "resnet18": Family("resnet18", r".*layer\d+\.\d+\.conv[12]", 224),
    "resnet50": Family("resnet50", r".*layer\d+\.\d+\.conv[123]", 224),
    "vit_small": Family("vit_small_patch16_224", r".*blocks\.\d+\.(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)", 224),
}


def family(name: str) -> Family:
    if name not in BACKBONES:
        raise AugurError(f"unknown backbone '{name}'; choose one of {', '.join(BACKBONES)}")
    return BACKBONES[name]


def create(name: str, image_size: int | None = None):
    """A headless timm backbone (num_classes=0: it returns features), random init."""
    import timm

    fam = family(name)
    kwargs: dict[str, Any] = {"pretrained": False, "num_classes": 0}
    if "vit" in fam.timm_name and image_size:
        kwargs["img_size"] = image_size
    return timm.create_model(fam.timm_name, **kwargs)


def load_weights(model, path: Path) -> None:
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_dir():
        path = path / "backbone.safetensors"
    if not path.is_file():
        raise AugurError(f"{path}: no backbone weights (a .safetensors file or a folder made by `augur pretrain`)")
    try:
        state = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise AugurError(f"{path}: cannot read the weights ({e.__class__.__name__})") from None
    state = {k: v for k, v in state.items() if not k.startswith(("fc.", "head.", "classifier."))}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or missing:
        raise AugurError(f"{path}: weights do not fit this backbone "
                         f"({len(missing)} missing, {len(unexpected)} unexpected keys, e.g. {(missing + unexpected)[0]})")


def backbone_info(path: Path) -> dict[str, Any]:
    """The card saved beside a pretrained backbone (its name and image size), if there is one."""
    card = Path(path) / "card.json" if Path(path).is_dir() else Path(path).with_name("card.json")
    return json.loads(card.read_text()) if card.is_file() else {}


def add_lora(model, name: str, rank: int = 8, alpha: int | None = None):
    """Wrap `model` with LoRA adapters on the family's default modules; only the adapters train."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=rank, lora_alpha=alpha or 2 * rank, target_modules=family(name).lora_targets,
                     lora_dropout=0.0, bias="none")
    return get_peft_model(model, cfg)


def norm_state(model) -> dict[str, Any]:
    """BatchNorm / LayerNorm parameters and running statistics: what LoRA does not capture but the
    outputs depend on (BN statistics keep updating while the adapters train)."""
    import torch

    out = {}
    for mname, m in model.named_modules():
        if isinstance(m, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.LayerNorm, torch.nn.GroupNorm)):
            for k, v in m.state_dict().items():
                out[f"{mname}.{k}"] = v.detach().clone().contiguous()
    return out


def save_pretrained(model, out: Path, *, name: str, lora: bool, base_state: dict | None, card: dict[str, Any]) -> dict:
    """OUT/backbone.safetensors (merged, the one to use), and with LoRA OUT/adapter/ (peft, safetensors)
    + OUT/adapter/norm_state.safetensors + OUT/base.safetensors, so base + adapter reproduce it."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    if lora:
        model.save_pretrained(str(out / "adapter"), safe_serialization=True)
        _save(save_file, norm_state(model), out / "adapter" / "norm_state.safetensors")
        if base_state is not None:
            _save(save_file, base_state, out / "base.safetensors")
            files["base.safetensors"] = sha256_file(out / "base.safetensors")
        merged = model.merge_and_unload()
    else:
        merged = model
    state = {k: v.detach().clone().contiguous() for k, v in merged.state_dict().items()}
    _save(save_file, state, out / "backbone.safetensors")
    files["backbone.safetensors"] = sha256_file(out / "backbone.safetensors")
    card = {**card, "backbone": name, "lora": lora, "files": files}
    with atomic_path(out / "card.json") as tmp:
        tmp.write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    return card


def _save(save_file, state, path: Path) -> None:
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))


def load_pretrained(folder: Path, *, from_adapter: bool = False):
    """The backbone `save_pretrained` wrote: merged weights, or base + adapter + norm state."""
    from safetensors.torch import load_file

    folder = Path(folder)
    info = backbone_info(folder)
    if not info:
        raise AugurError(f"{folder}: not a backbone folder made by `augur pretrain` (no card.json)")
    model = create(info["backbone"], info.get("image_size"))
    if not from_adapter:
        load_weights(model, folder / "backbone.safetensors")
        return model
    from peft import PeftModel

    model.load_state_dict(load_file(str(folder / "base.safetensors")))
    model = PeftModel.from_pretrained(model, str(folder / "adapter"))
    model.load_state_dict(load_file(str(folder / "adapter" / "norm_state.safetensors")), strict=False)
    return model.merge_and_unload()
