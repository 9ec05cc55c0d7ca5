"""Extrapolation throughput against the model's raw decode speed, measured side by side in one run.

Prints: raw unconstrained decode tok/s, the stage's effective tok/s (new tokens / whole stage wall
time, model and embedder loading included), their ratio (goal >= 0.9), prompts/minute, and for
reference llama-cpp-python's JSON-schema grammar path on the same model.

    python benchmarks/bench_extrapolate.py [--classes 8] [--per-class 8] [--no-grammar]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from toolkit.extrapolate import ExtrapolateConfig, extrapolate_domains, open_llm  # noqa: E402
from toolkit.llm import Sampling  # noqa: E402
from toolkit.templates import DOMAINS  # noqa: E402

CLASSES = ["dog", "elephant", "giraffe", "guitar", "horse", "house", "person", "teapot", "bicycle", "lighthouse",
           "heron", "violin"]


def raw_decode(llm, n_tokens: int) -> float:
    """Unconstrained sampling with no stop sequence, on a prompt like the stage's.

    This also leaves the few-shot prefix KV state in the (fresh) cache, as any first run does, so the
    stage below is measured in its steady state.
    """
    prefix, suffix = DOMAINS.prefix(), DOMAINS.suffix(cls="zebra", avoid="none")
    llm.complete(prefix, suffix, seed=1, sampling=Sampling(max_tokens=4), stop=[])  # prime the prefix
    g = llm.complete(prefix, suffix, seed=2, sampling=Sampling(max_tokens=n_tokens, temperature=0.8), stop=[])
    return g.completion_tokens / g.seconds


def grammar_decode(llm, n_tokens: int) -> float:
    from llama_cpp import LlamaGrammar

    schema = {"type": "object", "properties": {"domains": {"type": "array", "items": {
        "type": "object", "properties": {"domain": {"type": "string"}, "prompt": {"type": "string"}},
        "required": ["domain", "prompt"]}}}, "required": ["domains"]}
    grammar = LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
    raw = llm._llm
    raw.reset()
    llm._prefix = None
    prompt = DOMAINS.prefix() + DOMAINS.suffix(cls="zebra", avoid="none")
    t0 = time.perf_counter()
    out = raw.create_completion(prompt, max_tokens=n_tokens, temperature=0.8, seed=3, grammar=grammar)
    dt = time.perf_counter() - t0
    return out["usage"]["completion_tokens"] / dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--per-class", type=int, default=8)
    ap.add_argument("--raw-tokens", type=int, default=256)
    ap.add_argument("--no-grammar", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["AUGUR_CACHE_DIR"] = str(Path(tmp) / "cache")  # cold cache: every token is generated
        cfg = ExtrapolateConfig(progress=False)
        llm = open_llm(cfg)
        raw = raw_decode(llm, args.raw_tokens)
        del llm
        t0 = time.perf_counter()
        run = extrapolate_domains(CLASSES[: args.classes], args.per_class, Path(tmp) / "out",
                                  exclude_domains=["photo", "sketch"], cfg=cfg)
        wall = time.perf_counter() - t0
        raw_after = raw_decode(open_llm(cfg), args.raw_tokens)  # bracket the stage: the machine drifts
        s = run["summary"]
        effective = s["new_tokens"] / wall
        raw_mean = (raw + raw_after) / 2
        print(f"model: {run['provenance']['model']} ({run['provenance']['model_sha256'][:12]}), "
              f"threads {run['provenance']['threads']}")
        print(f"raw decode (unconstrained):   {raw_mean:7.1f} tok/s  (before {raw:.1f}, after {raw_after:.1f})")
        print(f"extrapolate stage effective:  {effective:7.1f} tok/s  ({s['new_tokens']} tokens, {wall:.1f} s wall, "
              f"{s['requests']} requests, loading included; {s['generation_seconds']:.1f} s inside LLM calls)")
        print(f"ratio stage / raw:            {effective / raw_mean:7.2f}  (goal >= 0.90)")
        print(f"prompts per minute:           {s['prompts'] / wall * 60:7.1f}  ({s['prompts']} prompts, "
              f"{s['status_counts']})")
        if not args.no_grammar:
            g = grammar_decode(open_llm(cfg), args.raw_tokens)
            print(f"JSON-schema grammar decode:   {g:7.1f} tok/s  (ratio {g / raw_mean:.2f}, for reference)")


if __name__ == "__main__":
    main()
