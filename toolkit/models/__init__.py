"""Models: cards (what a model is), kinds (how to check one), the store (local copies, sha256), tiny
stand-ins of real cards (the ONNX export of a diffusers card is rendering's: stages/render/onnx_export.py)."""

from .cards import PROMPTING_STYLES, ModelCard, get_card, load_cards, save_user_card
from .kinds import KINDS
from .store import ensure, how_to_get, import_model, local_path, pull, status_rows, store_path, verify

__all__ = ["PROMPTING_STYLES", "ModelCard", "get_card", "load_cards", "save_user_card", "KINDS", "ensure",
           "how_to_get", "import_model", "local_path", "pull", "status_rows", "store_path", "verify"]
