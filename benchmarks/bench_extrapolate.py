"""Batched generation against llama.cpp's own single-stream decode, side by side in one run.

Prints, on the same model and prompt:
  1. raw single-stream decode tok/s: llama-cpp-python's Llama (its default, repacked weights), the
     stage's few-shot prompt evaluated once, then one token per llama_decode, sampling as the stage does;
  2. the stage's effective tok/s at each --parallel, each from an empty cache: the tokens of the requests
     the stage used (what one-at-a-time generation produces; prefetched requests that turned out not to
     be needed do not count) over the whole stage's wall time, model loading included; and whether every
     run wrote the same prompts.jsonl bytes;
  3. with CPU-bound neighbour processes (one per core) running: raw decode at each thread count, and the
     stage at the best --parallel with the default thread count (toolkit.stages.extrapolate.llm);
  4. `--grammar` (llama.cpp's GBNF sampler, the list format): raw single-stream decode with llama-cpp-python's
     own LlamaGrammar against without, and the stage at the best --parallel with and without it;
  5. last line: `batched/single-stream ratio: X.XX` (best --parallel, no neighbour).

    python benchmarks/bench_extrapolate.py [--classes 24] [--per-class 8] [--parallel 1,2,4,8,16]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from toolkit.core.device import cpu_count  # noqa: E402
from toolkit.core.errors import AugurError  # noqa: E402
from toolkit.models import store  # noqa: E402
from toolkit.stages.extrapolate.config import DomainsConfig  # noqa: E402
from toolkit.stages.extrapolate.llm import default_threads  # noqa: E402
from toolkit.stages.extrapolate.stage import LIMITS, extrapolate_domains  # noqa: E402
from toolkit.stages.extrapolate.templates import DOMAINS  # noqa: E402

CLASSES = ["dog", "elephant", "giraffe", "guitar", "horse", "house", "person", "teapot", "bicycle", "lighthouse",
           "heron", "violin", "kettle", "owl", "tractor", "cactus", "umbrella", "lobster", "piano", "castle",
           "camel", "anchor", "bee", "canoe", "clock", "dragonfly", "fern", "harp", "jellyfish", "lantern"]


def raw_decode(path: Path, threads: int, n_tokens: int, grammar: bool = False) -> float:
    """llama.cpp single-stream decode, the way llama-cpp-python's create_completion runs it (with `grammar`,
    its LlamaGrammar of the domains list, as `create_completion(grammar=...)` would add it)."""
    from llama_cpp import Llama, LlamaGrammar

    llm = Llama(model_path=str(path), n_ctx=2048, n_threads=threads, n_threads_batch=threads, seed=1,
                verbose=False)
    prompt = DOMAINS.prefix() + DOMAINS.suffix(cls="zebra", avoid="none", listed="none", n="8")
    llm.eval(llm.tokenize(prompt.encode("utf-8")))
    g = (LlamaGrammar.from_string(DOMAINS.grammar(chat=False, max_item_chars=LIMITS.max_item_chars), verbose=False)
         if grammar else None)
    t0 = time.perf_counter()
    for _ in range(n_tokens):
        tok = llm.sample(top_k=40, top_p=0.95, temp=0.8, repeat_penalty=1.1, grammar=g)
        llm.eval([tok])
    dt = time.perf_counter() - t0
    del llm
    return n_tokens / dt


def stage(classes: list[str], per_class: int, parallel: int, threads: int | None, grammar: bool = False
          ) -> tuple[float, bytes, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["AUGUR_CACHE_DIR"] = str(Path(tmp) / "cache")  # every run from an empty cache
        cfg = dataclasses.replace(DomainsConfig(), classes=classes, domains_per_class=per_class,
                                  parallel=parallel, threads=threads, quiet=True, grammar=grammar,
                                  min_fraction=0.0)  # the speed is measured, not what the 270M model reaches
        try:
            run = extrapolate_domains(cfg, Path(tmp) / "out").data
            data = (Path(tmp) / "out" / "prompts.jsonl").read_bytes()
        except AugurError:  # a class left with no domain stops the stage; run.json still holds what it did
            run = json.loads((Path(tmp) / "out" / "run.json").read_text())
            data = b""
    s = run["summary"]
    return s["used_tokens"] / s["wall_seconds"], data, s


class Neighbours:
    """One CPU-bound process per core, as a training job beside the LLM would be."""

    def __init__(self, n: int):
        self.n = n

    def __enter__(self):
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(self.n)]
        time.sleep(1.0)
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.kill()
            p.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--classes", type=int, default=24)
    ap.add_argument("--per-class", type=int, default=8)
    ap.add_argument("--parallel", default="1,2,4,8,16")
    ap.add_argument("--raw-tokens", type=int, default=160)
    ap.add_argument("--model", default="gemma3-270m-q4km")
    ap.add_argument("--no-neighbour", action="store_true")
    ap.add_argument("--no-grammar", action="store_true")
    a = ap.parse_args()

    card, path, _ = store.ensure(a.model)
    cores = cpu_count()
    t_default = default_threads()
    classes = CLASSES[: a.classes]
    print(f"model {card.name} ({path.name}); {cores} cores; default threads {t_default}; "
          f"{len(classes)} classes x {a.per_class} domains")

    raw = raw_decode(path, t_default, a.raw_tokens)
    print(f"raw single-stream decode, {t_default} thread(s): {raw:.1f} tok/s")

    results, outputs = {}, {}
    for p in [int(x) for x in a.parallel.split(",")]:
        tps, data, s = stage(classes, a.per_class, p, None)
        results[p], outputs[p] = tps, data
        print(f"stage --parallel {p:>2}: {tps:6.1f} tok/s effective ({s['used_tokens']} tokens used of "
              f"{s['new_tokens']} generated, {s['requests']} requests, {s['wall_seconds']:.1f} s wall)   "
              f"{tps / raw:.2f}x single-stream")
    same = len(set(outputs.values())) == 1
    print(f"identical prompts.jsonl bytes at every --parallel: {'yes' if same else 'NO'}")
    best = max(results, key=results.get)

    if not a.no_neighbour:
        print(f"-- beside {cores} CPU-bound neighbour processes (fair share: {cores / (cores + cores):.2f} of the "
              f"machine's compute)")
        with Neighbours(cores):
            for t in sorted({1, t_default, cores}):
                print(f"raw single-stream decode, {t} thread(s): {raw_decode(path, t, a.raw_tokens // 2):.1f} tok/s")
            tps, data, _ = stage(classes[: max(4, len(classes) // 3)], a.per_class, best, None)
            print(f"stage --parallel {best}, default threads: {tps:.1f} tok/s effective")

    if not a.no_grammar:
        print("-- with the GBNF list grammar (--grammar)")
        raw_g = raw_decode(path, t_default, a.raw_tokens, grammar=True)
        print(f"raw single-stream decode with LlamaGrammar: {raw_g:.1f} tok/s ({raw_g / raw:.2f}x without)")
        tps_g, _, s = stage(classes, a.per_class, best, None, grammar=True)
        print(f"stage --parallel {best} --grammar: {tps_g:.1f} tok/s effective ({s['used_tokens']} tokens, "
              f"{s['wall_seconds']:.1f} s wall, {s['kept']}/{s['wanted']} kept)")
        print(f"grammar/free tok/s ratio (stage): {tps_g / results[best]:.2f}")

    print(f"best --parallel: {best}")
    print(f"batched/single-stream ratio: {results[best] / raw:.2f}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
