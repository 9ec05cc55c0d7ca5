"""Model cards: what a model is and where it comes from (shipped `models/*.yaml` and user cards).

A card's name is an identifier (it names files in the card store and the model store): it is checked
against one pattern, so no card can write outside its folder.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..core import paths
from ..core.errors import AugurError
from ..core.files import atomic_write
from ..core.names import check_identifier
from .kinds import KINDS

PROMPTING_STYLES = ("base", "chat")
# llama-cpp-python ships these templates (llama_chat_format.*_CHAT_TEMPLATE)
CHAT_TEMPLATES = ("chatml", "llama3", "mistral")
_KIND_WORDS = {str: "text", dict: "a mapping", list: "a list", int: "an integer"}


@dataclass
class ModelCard:
    name: str
    kind: str
    description: str = ""
    source: dict[str, Any] = field(default_factory=dict)  # {pypi: pkg} | {hub: repo, file?, revision?} | {path: p} | {builtin: b}
    file: str | None = None  # file name inside the store for single-file models
    sha256: str | None = None
    size: int | None = None
    license: str = "unknown"
    prompting: str | None = None  # LLMs: base (few-shot completion) or chat (instruct template)
    # LLMs: the chat template family (chatml, llama3, mistral) used only when the GGUF carries none, as
    # the tiny stand-in of a chat card (the embedded base GGUF) does: it keeps the card's prompt shape.
    chat_template: str | None = None
    context_length: int = 4096
    variant: str | None = None  # diffusers weight variant the hub folder ships (e.g. fp16)
    files: list[str] = field(default_factory=list)  # what a hub pull fetches, when not the whole pipeline
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
        check_identifier(d["name"], f"{where}: card name")
        types = {"description": str, "source": dict, "file": str, "sha256": str, "size": int, "license": str,
                 "prompting": str, "chat_template": str, "context_length": int, "variant": str, "files": list,
                 "extra": dict}
        for key, kind in types.items():
            v = d.get(key)
            if v is not None and (not isinstance(v, kind) or (kind is int and isinstance(v, bool))):
                raise AugurError(f"{where}: '{key}' must be {_KIND_WORDS[kind]}, not {type(v).__name__}")
        if d["kind"] not in KINDS:
            raise AugurError(f"{where}: kind '{d['kind']}' is not one of {', '.join(KINDS)}")
        if d.get("prompting") not in (None, *PROMPTING_STYLES):
            raise AugurError(f"{where}: prompting must be one of {', '.join(PROMPTING_STYLES)}")
        if d.get("chat_template") not in (None, *CHAT_TEMPLATES):
            raise AugurError(f"{where}: chat_template must be one of {', '.join(CHAT_TEMPLATES)}")
        if "render" in (d.get("extra") or {}):
            from .render_defaults import check_render_defaults

            check_render_defaults(d["extra"]["render"], where)
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("card_path")
        return {k: v for k, v in d.items() if v not in (None, {}, "", [])}

    @property
    def render_defaults(self) -> dict[str, Any]:
        return dict(self.extra.get("render", {}))


def load_cards() -> dict[str, ModelCard]:
    cards: dict[str, ModelCard] = {}
    for folder in (paths.shipped_cards_dir(), paths.user_cards_dir()):
        for p in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
            try:
                data = yaml.safe_load(p.read_text(encoding="utf-8"))
            except (yaml.YAMLError, UnicodeDecodeError) as e:
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


def save_user_card(card: ModelCard) -> Path:
    check_identifier(card.name, "card name")
    target = paths.user_cards_dir() / f"{card.name}.yaml"
    with atomic_write(target) as tmp:
        tmp.write_text(yaml.safe_dump(card.to_dict(), sort_keys=False), encoding="utf-8")
    return target
