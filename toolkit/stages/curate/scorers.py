"""Scorers: the models that judge synthetic images, each a model card, in a registry by card kind.

- `clip` (clip-vit-b16, clip-vit-l14 and their --tiny stand-ins): transformers' CLIPModel/CLIPProcessor
  from the card's folder. Image embeddings (the projection, L2-normalised), CLIPScore of each image
  against its own prompt (100 * max(cos, 0): Hessel et al., CVMI-Lab/SyntheticData), and a zero-shot class
  distribution over "a photo of a {class}" (softmax of logit_scale * cos, as CLIP's zero-shot).
- `backbone` cards that are ImageNet classifiers (efficientnet-lite0-imagenet, embedded via PyPI): the
  pooled features as embeddings, and class agreement only, for the set's classes whose name is one of the
  synonyms of an ImageNet class in ImageNet's own class list (timm's ImageNetInfo lemmas). A class's
  probability is the softmax mass of its ImageNet classes, renormalised over the set's matched classes; a
  class with no match is unscored (None), never counted as agreeing.

`best_present()` picks the default: the largest CLIP that is here, else the ImageNet classifier.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...core.errors import AugurError

PREFERENCE = ("clip-vit-l14", "clip-vit-b16", "efficientnet-lite0-imagenet")
CLASSIFIERS = {"efficientnet-lite0-imagenet": "efficientnet_lite0", "efficientnet-lite1-imagenet": "efficientnet_lite1",
               "efficientnet-lite2-imagenet": "efficientnet_lite2"}
ZERO_SHOT_TEMPLATE = "a photo of a {}"


@dataclass
class Scores:
    """What a scorer says of a batch: embeddings (N, D), the zero-shot class distribution over the scored
    classes (N, C_scored) or None, and CLIPScores (N,) or None."""

    embeddings: np.ndarray
    class_probs: np.ndarray | None = None
    clip_scores: np.ndarray | None = None


@dataclass
class Scorer:
    name: str
    sha256: str
    kind: str  # "clip" or "classifier"
    path: Path
    classes: list[str] = field(default_factory=list)
    scored: list[str] = field(default_factory=list)  # the classes it can score, in `classes` order
    matches: dict[str, list[str]] = field(default_factory=dict)  # class -> the ImageNet names it matched

    @property
    def measures_prompts(self) -> bool:
        return self.kind == "clip"

    def describe(self) -> dict[str, Any]:
        return {"scorer": self.name, "scorer_sha256": self.sha256, "scorer_kind": self.kind,
                "embedding": ("CLIP image projection" if self.kind == "clip" else "classifier pooled features")}


def best_present() -> str:
    from ... import models

    cards = models.load_cards()
    for name in PREFERENCE:
        if name in cards and (models.local_path(cards[name]) is not None or "pypi" in cards[name].source):
            return name
    raise AugurError("no scorer is present; import one (augur models import clip-vit-b16 DIR)")


def load_scorer(name: str, classes: list[str], device: str) -> "Scorer":
    from ... import models

    card = models.get_card(name)
    if card.kind == "clip":
        _, path, sha = models.ensure(name)
        return ClipScorer(name, sha, "clip", path, classes, list(classes), device=device)
    arch = CLASSIFIERS.get(card.source.get("tiny_of", name)) if card.kind == "backbone" else None
    if arch is None:
        raise AugurError(f"model '{name}' ({card.kind}) is not a scorer: use a clip card (clip-vit-b16, "
                         f"clip-vit-l14) or an ImageNet classifier ({', '.join(CLASSIFIERS)})")
    _, path, sha = models.ensure(name)
    matches = imagenet_matches(classes)
    return ImageNetScorer(name, sha, "classifier", path, classes, [c for c in classes if matches[c]],
                          {c: v for c, v in matches.items() if v}, device=device, arch=arch,
                          key_mapping=card.extra.get("key_mapping"))


# ----------------------------------------------------------------------------- ImageNet class names
def _norm(text: str) -> str:
    return " ".join(text.lower().replace("_", " ").replace("-", " ").split())


def imagenet_synonyms() -> list[list[str]]:
    """The synonyms of each of ImageNet-1k's classes, from ImageNet's own class list (WordNet lemmas)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [[s.strip() for s in info.index_to_description(i).split(",") if s.strip()]
            for i in range(info.num_classes())]


def imagenet_indices(classes: list[str]) -> dict[str, list[int]]:
    """class -> the ImageNet classes one of whose synonyms is its name (case, '_' and '-' aside)."""
    index: dict[str, list[int]] = {}
    for i, names in enumerate(imagenet_synonyms()):
        for s in names:
            index.setdefault(_norm(s), []).append(i)
    return {c: index.get(_norm(c), []) for c in classes}


def imagenet_matches(classes: list[str]) -> dict[str, list[str]]:
    """class -> the descriptions of the ImageNet classes it matched (what the record shows)."""
    syn = imagenet_synonyms()
    return {c: [", ".join(syn[i]) for i in idx] for c, idx in imagenet_indices(classes).items()}


# ----------------------------------------------------------------------------- the scorers
class ImageNetScorer(Scorer):
    def __init__(self, *args, device: str, arch: str, key_mapping: str | None):
        super().__init__(*args)
        import timm
        import torch

        from ...learn.backbones import _positional, _read_state, family

        model = timm.create_model(family(arch).timm_name, pretrained=False)
        state = _read_state(self.path)
        if key_mapping == "positional":
            state = _positional(state, arch, self.name)
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise AugurError(f"model '{self.name}': its weights do not fit {arch} "
                             f"({str(e).splitlines()[0][:120]})") from None
        self.model = model.eval().to(device)
        self.device = device
        self.data_config = timm.data.resolve_data_config({}, model=model)
        self.transform = timm.data.create_transform(**self.data_config)
        idx = imagenet_indices(self.scored)
        self.groups = [idx[c] for c in self.scored]
        self._torch = torch

    def preprocess(self, image):
        return self.transform(image)

    def __call__(self, pixels, prompts: list[str]) -> Scores:
        torch = self._torch
        with torch.inference_mode():
            feats = self.model.forward_head(self.model.forward_features(pixels.to(self.device)), pre_logits=True)
            probs = torch.softmax(self.model.get_classifier()(feats).float(), dim=-1).cpu().numpy()
        emb = feats.float().cpu().numpy()
        if not self.groups:
            return Scores(emb)
        mass = np.stack([probs[:, g].sum(axis=1) for g in self.groups], axis=1)
        return Scores(emb, mass / np.maximum(mass.sum(axis=1, keepdims=True), 1e-30))


class ClipScorer(Scorer):
    def __init__(self, *args, device: str):
        super().__init__(*args)
        import torch
        from transformers import CLIPModel, CLIPProcessor

        try:
            self.model = CLIPModel.from_pretrained(str(self.path), local_files_only=True).eval().to(device)
            self.processor = CLIPProcessor.from_pretrained(str(self.path), local_files_only=True, use_fast=False)
        except (OSError, ValueError) as e:
            raise AugurError(f"model '{self.name}': cannot load the CLIP folder {self.path} "
                             f"({str(e).splitlines()[0][:160]})") from None
        self.device = device
        self._torch = torch
        with torch.inference_mode():
            self.class_text = self._text([ZERO_SHOT_TEMPLATE.format(c) for c in self.scored])

    def _text(self, texts: list[str]):
        tok = self.processor.tokenizer(texts, padding=True, truncation=True, max_length=77, return_tensors="pt")
        feats = self.model.get_text_features(**{k: v.to(self.device) for k, v in tok.items()})
        return feats / feats.norm(dim=-1, keepdim=True)

    def preprocess(self, image):
        return self.processor.image_processor(images=image, return_tensors="pt")["pixel_values"][0]

    def __call__(self, pixels, prompts: list[str]) -> Scores:
        torch = self._torch
        with torch.inference_mode():
            img = self.model.get_image_features(pixel_values=pixels.to(self.device))
            img = img / img.norm(dim=-1, keepdim=True)
            txt = self._text(prompts)
            clip_scores = 100 * torch.clamp((img * txt).sum(-1), min=0)
            logits = self.model.logit_scale.exp() * img @ self.class_text.T
            probs = torch.softmax(logits.float(), dim=-1)
        return Scores(img.float().cpu().numpy(), probs.cpu().numpy(), clip_scores.float().cpu().numpy())
