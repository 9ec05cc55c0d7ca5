"""Model kinds, a registry: adding one is one decorated class with a cheap structural `check`."""

from __future__ import annotations

from pathlib import Path

from ..core.errors import AugurError
from ..core.registry import Registry

KINDS = Registry("model kind", instantiate=True)


class ModelKind:
    is_folder = False

    def check(self, path: Path) -> None:
        """Raise AugurError if `path` is not a usable model of this kind (cheap structural check)."""


@KINDS.register("gguf")
class GGUFKind(ModelKind):
    def check(self, path: Path) -> None:
        if not path.is_file():
            raise AugurError(f"{path}: a GGUF model must be a file")
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                raise AugurError(f"{path}: not a GGUF file (bad magic); is it corrupt or truncated?")


@KINDS.register("diffusers")
class DiffusersKind(ModelKind):
    is_folder = True

    def check(self, path: Path) -> None:
        if not (path / "model_index.json").is_file():
            raise AugurError(f"{path}: not a diffusers pipeline folder (no model_index.json)")


@KINDS.register("onnx")
class OnnxKind(ModelKind):
    is_folder = True

    def check(self, path: Path) -> None:
        if not (path / "model_index.json").is_file() or not (path / "unet" / "model.onnx").is_file():
            raise AugurError(f"{path}: not an ONNX diffusion pipeline folder (model_index.json, unet/model.onnx)")


@KINDS.register("embedding")
class EmbeddingKind(ModelKind):
    is_folder = True

    def check(self, path: Path) -> None:
        if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
            raise AugurError(f"{path}: not a transformers embedding folder (config.json, model.safetensors)")


@KINDS.register("lora")
class LoraKind(ModelKind):
    def check(self, path: Path) -> None:
        if not path.is_file() or path.suffix != ".safetensors":
            raise AugurError(f"{path}: a LoRA must be a .safetensors file")


@KINDS.register("autoencoder-tiny")
class TinyAutoencoderKind(ModelKind):
    is_folder = True

    def check(self, path: Path) -> None:
        if not (path / "config.json").is_file():
            raise AugurError(f"{path}: not a diffusers AutoencoderTiny folder (no config.json)")


@KINDS.register("backbone")
class BackboneKind(ModelKind):
    """Image backbone weights for a timm architecture (the card's extra.arch): one safetensors file, a
    state-dict .pth (read with torch.load(weights_only=True)), or a folder holding one of them."""

    def check(self, path: Path) -> None:
        if path.is_dir():
            if not any(p.suffix in (".safetensors", ".pth", ".bin") for p in path.iterdir()):
                raise AugurError(f"{path}: no backbone weights (.safetensors or .pth) in this folder")
        elif path.suffix not in (".safetensors", ".pth", ".pt", ".bin"):
            raise AugurError(f"{path}: backbone weights must be a .safetensors or .pth file")


@KINDS.register("clip")
class ClipKind(ModelKind):
    """A transformers CLIP folder (CLIPModel + CLIPProcessor): what `augur curate` scores images with."""

    is_folder = True

    def check(self, path: Path) -> None:
        if not (path / "config.json").is_file() or not (path / "preprocessor_config.json").is_file():
            raise AugurError(f"{path}: not a CLIP folder (config.json, preprocessor_config.json, the tokenizer, "
                             "model.safetensors)")
        if not (path / "model.safetensors").is_file():
            raise AugurError(f"{path}: no model.safetensors in this CLIP folder (only safetensors weights are loaded)")
