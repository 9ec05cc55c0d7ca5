"""Where Augur keeps models, caches and user model cards."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

REPO_ROOT = Path(__file__).resolve().parent.parent


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


def shipped_cards_dir() -> Path:
    env = os.environ.get("AUGUR_MODELS_DIR")
    return Path(env) if env else REPO_ROOT / "models"
