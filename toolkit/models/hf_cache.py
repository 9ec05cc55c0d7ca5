"""Models a user already has in the local Hugging Face cache (`~/.cache/huggingface/hub`, or HF_HUB_CACHE).

A hub card is found there with huggingface_hub's own cache lookups and no network (`try_to_load_from_cache`,
`snapshot_download(local_files_only=True)`): its revision's snapshot, never another. Nothing is copied. A
single-file card (a LoRA, a GGUF) is the snapshot's file itself. A folder card gets a *view* in the model
store: real folders of symlinks to the snapshot's files, only those the card needs, so that hashing and
loading read nothing else:
- a diffusers pipeline: model_index.json and, per component it names, the configs, tokenizer files and
  the safetensors weights of the card's variant (one copy: not fp32 and fp16 both, no .bin, .ckpt, flax
  or ONNX duplicates), a component's .bin only where it has no safetensors (a folder from before them); no
  safety checker (Augur loads pipelines without one);
- a card with `files` patterns: the files they match.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
from pathlib import Path

from ..core.errors import AugurError
from .cards import ModelCard

# Components Augur never loads (pipelines are built with safety_checker=None).
SKIPPED_COMPONENTS = ("safety_checker",)
# Weight formats a pipeline folder may hold beside safetensors; safetensors are loaded where a component has
# them, else its pickled .bin (with torch.load(weights_only=True), as diffusers and transformers read them),
# never the others.
OTHER_WEIGHTS = (".bin", ".ckpt", ".pt", ".pth", ".msgpack", ".h5", ".onnx", ".onnx_data", ".pb")
_WEIGHTS = re.compile(r"^(?P<base>[^.]+?)(?:\.(?P<variant>[A-Za-z0-9_]+))?(?P<shard>-\d{5}-of-\d{5})?"
                      r"\.(?P<format>safetensors|bin)(?P<index>\.index\.json)?$")


def _variant_of(name: str, fmt: str = "safetensors") -> tuple[bool, str | None]:
    """(is a weight file of format `fmt` or its shard index, its variant or None)."""
    m = _WEIGHTS.match(name)
    return (True, m.group("variant")) if m and m.group("format") == fmt else (False, None)


def select_weights(names: list[str], variant: str | None) -> list[str]:
    """The weight files (and shard indexes) of one component that diffusers loads for `variant`: its
    safetensors where it has any, else its .bin (diffusers' fallback for folders from before safetensors);
    within a format that variant's, else the plain ones (diffusers falls back to them); with no variant
    asked, the plain ones, else the single variant there is (a folder that ships only fp16 weights)."""
    for fmt in ("safetensors", "bin"):
        by_variant: dict[str | None, list[str]] = {}
        for n in names:
            is_weight, v = _variant_of(Path(n).name, fmt)
            if is_weight:
                by_variant.setdefault(v, []).append(n)
        if variant is not None and variant in by_variant:
            return by_variant[variant]
        if None in by_variant:
            return by_variant[None]
        if variant is None and len(by_variant) == 1:
            return next(iter(by_variant.values()))
    return []


def _is_weight(name: str) -> bool:
    return _variant_of(Path(name).name)[0] or name.endswith(OTHER_WEIGHTS) or name.endswith(".bin.index.json")


def pipeline_files(snapshot: Path, variant: str | None) -> list[str]:
    """The files of a diffusers pipeline snapshot that loading it with `variant` reads (relative paths)."""
    try:
        index = json.loads((snapshot / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise AugurError(f"{snapshot}: no readable model_index.json in this cached snapshot ({e})") from None
    if not isinstance(index, dict):
        raise AugurError(f"{snapshot}/model_index.json: not a JSON object")
    files = ["model_index.json"]
    for name, value in sorted(index.items()):
        if name.startswith("_") or name in SKIPPED_COMPONENTS or not isinstance(value, list) or value[:1] == [None]:
            continue
        folder = snapshot / name
        if not folder.is_dir():
            continue
        names = sorted(p.relative_to(snapshot).as_posix() for p in folder.rglob("*") if p.is_file())
        weights = select_weights(names, variant)
        if not weights and any(_is_weight(n) for n in names):
            raise AugurError(f"{snapshot}/{name}: no safetensors or .bin weights{f' of variant {variant}' if variant else ''}"
                             " in the cache (only those are loaded); download them with huggingface-cli")
        files += [n for n in names if not _is_weight(n)] + weights
    return files


def pattern_files(snapshot: Path, patterns: list[str]) -> list[str]:
    names = sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file())
    return [n for n in names if any(fnmatch.fnmatch(n, pat) for pat in patterns)]


def _cached_file(card: ModelCard) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    got = try_to_load_from_cache(card.source["hub"], card.source.get("file", card.file),
                                 revision=card.source.get("revision"))
    return Path(got) if isinstance(got, str) and Path(got).is_file() else None


def _cached_snapshot(card: ModelCard) -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        # local_files_only: the snapshot of the card's revision as the cache holds it, no network
        got = Path(snapshot_download(card.source["hub"], revision=card.source.get("revision"),
                                     local_files_only=True))
    except Exception:  # huggingface_hub raises its own types for "not in the cache"
        return None
    return got if got.is_dir() else None


def find(card: ModelCard, view: Path) -> tuple[Path, dict] | None:
    """The card's model in the local Hugging Face cache: (the path to use, what was found), or None. A folder
    card's view is (re)made at `view`."""
    if "hub" not in card.source:
        return None
    if card.file:
        path = _cached_file(card)
        return (path, {"hf_cache": str(path)}) if path is not None else None
    snapshot = _cached_snapshot(card)
    if snapshot is None:
        return None
    if card.files:
        files = pattern_files(snapshot, card.files)
        if len(files) < len(card.files):
            return None  # some of the card's files were never downloaded: not this card's model yet
    elif card.kind == "diffusers":
        if not (snapshot / "model_index.json").is_file():
            return None
        files = pipeline_files(snapshot, card.variant)
    else:
        files = pattern_files(snapshot, ["*"])
    make_view(snapshot, files, view)
    return view, {"hf_cache": str(snapshot), "files": len(files)}


def make_view(snapshot: Path, files: list[str], view: Path) -> None:
    """Folders of symlinks to the snapshot's `files`, renamed into place whole."""
    tmp = view.parent / f".{view.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for rel in files:
        link = tmp / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.abspath(snapshot / rel), link)
    tmp.mkdir(parents=True, exist_ok=True)
    if view.is_symlink() or view.is_file():
        view.unlink()
    elif view.exists():
        shutil.rmtree(view)
    view.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, view)
