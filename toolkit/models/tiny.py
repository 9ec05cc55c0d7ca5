"""Tiny random-weight stand-ins with the real models' folder structure (`augur models pull CARD --tiny`).

Nothing here can download a real Stable Diffusion or 7B LLM, so each real card has a stand-in built
locally: the same pipeline class, component classes, scheduler class and configuration keys, subfolders,
file names (fp16 variant files where the hub folder ships them), the LoRA file's key format, TAESD's
layout, at tiny dimensions and with random weights. Loading one exercises the real card's loading path
(offline, `HF_HUB_OFFLINE=1`), so users try a recipe on a laptop and tests cover every card. A stand-in
is registered as CARD-tiny with a card saying what it is; it draws noise.

For a GGUF card the stand-in is the embedded Gemma 3 270M run with the card's prompting style (chat for
the instruct cards). For a backbone card it is the architecture's timm weights, random, in the same
file format. The structures in ARCHS were written from the hub repositories' published layouts; they
could not be checked against a download here (docs/verification.md).

`tiny-lcm`, the built-in render model, is built the same way (arch "lcm-plain").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.errors import AugurError
from ..core.files import sha256_of

def tiny_card(card):
    """The CARD-tiny card of a real card (not yet built)."""
    from .cards import ModelCard

    name = f"{card.name}-tiny"
    what = "It draws noise" if card.kind in ("diffusers", "onnx") else "Its weights are random"
    extra = {k: v for k, v in card.extra.items() if k != "tiny"}
    if card.kind == "gguf":
        from .store import ensure

        base, path, sha = ensure("gemma3-270m-q4km")
        return ModelCard(name=name, kind="gguf", source={"path": str(path), "tiny_of": card.name},
                         description=(f"Stand-in for {card.name}: the embedded Gemma 3 270M with {card.name}'s "
                                      f"prompting style ({card.prompting}), to try recipes offline."),
                         sha256=sha, license=base.license, prompting=card.prompting,
                         chat_template=card.chat_template,
                         context_length=min(card.context_length, base.context_length), extra=extra)
    if "tiny" not in card.extra and card.kind not in ("autoencoder-tiny", "backbone"):
        raise AugurError(f"model '{card.name}' ({card.kind}) has no tiny stand-in")
    render = dict(card.render_defaults)
    if render.get("lora"):
        render["lora"] = f"{render['lora']}-tiny"
    if render:
        render["size"] = 32  # the stand-ins' native size
        extra["render"] = render
    extra["tiny"] = card.extra.get("tiny", {})
    file = card.file if card.kind == "lora" else None
    return ModelCard(name=name, kind=card.kind, source={"tiny_of": card.name}, file=file,
                     description=(f"Tiny random-weight stand-in for {card.name}, with its folder's structure "
                                  f"(built by Augur). {what}: it exists to try recipes and loading paths offline."),
                     license="Apache-2.0 (built by Augur)", variant=card.variant, extra=extra)


def pull_tiny(card) -> tuple[Any, Path, str]:
    """Build (once) and register CARD-tiny; idempotent: the same bytes, the same sha256."""
    from . import store
    from .cards import load_cards, save_user_card

    if card.source.get("tiny_of") or card.name.endswith("-tiny"):
        raise AugurError(f"model '{card.name}' is a stand-in already")
    new = tiny_card(card)
    cards = load_cards()
    render = new.extra.get("render", {})
    if render.get("lora") and render["lora"] not in cards:
        pull_tiny(cards[render["lora"][: -len("-tiny")]])
    save_user_card(new)
    path = store.local_path(new)
    if path is None or new.kind == "gguf":
        path = store.pull(new) if path is None else path
    digest = sha256_of(path)
    if new.kind != "gguf":
        new.sha256 = digest
        save_user_card(new)
    return new, path, store.verify(new, path, use_record=False, repin=True)
