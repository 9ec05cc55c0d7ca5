"""Where Augur keeps models, caches and user model cards, and where the shipped cards and recipes are.

The shipped model cards (top-level `models/`) and recipes (`recipes/`) are package data: a built
distribution holds them as `toolkit/shipped/models` and `toolkit/shipped/recipes` (pyproject.toml
maps them there), so a non-editable install finds them from any folder. In a source checkout or an
editable install they are read where they are.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

_PACKAGE = Path(__file__).resolve().parent.parent  # toolkit/
_CHECKOUT = _PACKAGE.parent


def home() -> Path:
    """AUGUR_HOME, else the platform's user cache dir (~/.cache/augur on Linux)."""
    env = os.environ.get("AUGUR_HOME")
    return Path(env).expanduser() if env else Path(platformdirs.user_cache_dir("augur"))


def cache_dir() -> Path:
    """Stage caches (LLM generations...). AUGUR_CACHE_DIR overrides, so tests can isolate them."""
    env = os.environ.get("AUGUR_CACHE_DIR")
    return Path(env).expanduser() if env else home() / "cache"


def model_store() -> Path:
    return home() / "models"


def user_cards_dir() -> Path:
    return home() / "cards"


def shipped_dir(kind: str) -> Path:
    """The shipped `models` or `recipes` folder: package data when installed, else the checkout's."""
    installed = _PACKAGE / "shipped" / kind
    if installed.is_dir():
        return installed
    if (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / kind).is_dir():
        return _CHECKOUT / kind
    return installed


def shipped_cards_dir() -> Path:
    env = os.environ.get("AUGUR_MODELS_DIR")
    return Path(env) if env else shipped_dir("models")


def shipped_recipes_dir() -> Path:
    return shipped_dir("recipes")
