"""How many tokens a prompt is to a Stable Diffusion text encoder: OpenAI CLIP's tokenizer, offline.

Every Stable Diffusion family Augur renders with (SD 1.x / 2.x, LCM, Turbo, SDXL's two encoders) reads the
prompt through transformers' CLIPTokenizer over OpenAI's byte-pair vocabulary and keeps 77 tokens, the start
and end tokens included; the rest is cut. The vocabulary ships with the package (clip_vocab/, MIT: the file
open_clip distributes), and the tokenizer is transformers' own class built from it, as the pipelines' folders
hold it (vocab.json + merges.txt, made here the way open_clip's SimpleTokenizer makes its vocabulary), so
the count here is the count at render time.
"""

from __future__ import annotations

import functools
import gzip
import json
import tempfile
from pathlib import Path

from ...core.files import sha256_file

VOCAB = Path(__file__).parent / "clip_vocab" / "bpe_simple_vocab_16e6.txt.gz"
LIMIT = 77  # CLIP's context: what the pipelines keep (start and end tokens included)
# OpenAI's CLIP vocabulary: 256 bytes, the same with the end-of-word mark, 48,894 merges, start and end
_MERGES = 49152 - 256 - 2


@functools.lru_cache(maxsize=1)
def tokenizer():
    from transformers import CLIPTokenizer
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    lines = gzip.open(VOCAB, "rt", encoding="utf-8").read().split("\n")[1: _MERGES + 1]
    merges = [tuple(line.split()) for line in lines]
    chars = list(bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}), encoding="utf-8")
        (Path(d) / "merges.txt").write_text("#version: 0.2\n" + "\n".join(lines) + "\n", encoding="utf-8")
        return CLIPTokenizer(str(Path(d) / "vocab.json"), str(Path(d) / "merges.txt"), model_max_length=LIMIT)


def count(text: str) -> int:
    """The prompt's CLIP tokens, start and end included (what the 77 limit counts)."""
    return len(tokenizer()(text, truncation=False, verbose=False).input_ids)


@functools.lru_cache(maxsize=1)
def provenance() -> dict:
    return {"tokenizer": "CLIP BPE (OpenAI, bpe_simple_vocab_16e6)", "sha256": sha256_file(VOCAB), "limit": LIMIT}
