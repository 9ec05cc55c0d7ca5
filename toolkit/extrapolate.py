"""The `extrapolate` stage: an LLM imagines novel domains per class, or the classes of a realm.

- domains (Beyond Finite Data): for each class, N domains it could be depicted in, beyond the
  dataset's own, each with an image prompt.
- realm (Premonition): realm → sub-groups → classes with a short visual description.

Each LLM request is one cached unit keyed by model sha, template, query and seed, so a re-run is
free and an interrupted run resumes. Output rows are written only when the whole stage is done.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm

from . import __version__, classnames, models, paths
from .cache import JsonCache, derive_seed, key_of
from .embed import EMBEDDER, Embedder, SemanticFilter
from .errors import AugurError
from .fileio import refuse_overwrite, sha256_file, write_json, write_jsonl
from .llm import LLM, Sampling
from .quality import (Limits, check_class, check_domain, check_group, compose_prompt, near_duplicate, norm_key,
                      parse_lines, words)
from .templates import BASE_STOPS, CLASSES, DOMAINS, GROUPS, Template

# A generated list line is ~15-20 tokens; this budget per wanted item leaves room for drift.
TOKENS_PER_ITEM = 28


@dataclass
class ExtrapolateConfig:
    model: str = "gemma3-270m-q4km"
    seed: int = 0
    prompting: str | None = None  # None: from the card, else detected from the GGUF
    sampling: Sampling = field(default_factory=Sampling)
    max_attempts: int = 4
    semantic_dedup: bool = True
    semantic_threshold: float = 0.8
    limits: Limits = field(default_factory=Limits)
    threads: int | None = None
    gpu_layers: int = -1  # all layers on the GPU when llama.cpp was built with one; ignored on CPU builds
    progress: bool = True

    def validate(self) -> None:
        if self.max_attempts < 1:
            raise AugurError("--max-attempts must be at least 1")
        if not 0.0 <= self.sampling.temperature <= 2.0:
            raise AugurError("--temperature must be between 0 and 2")
        if self.prompting not in (None, *models.PROMPTING_STYLES):
            raise AugurError(f"--prompting must be one of auto, {', '.join(models.PROMPTING_STYLES)}")


@dataclass
class ListResult:
    items: list[tuple[str, str | None]]
    wanted: int
    attempts: int
    rejected: Counter

    @property
    def status(self) -> str:
        return "ok" if len(self.items) >= self.wanted else ("partial" if self.items else "failed")


@dataclass
class Stats:
    new_tokens: int = 0
    gen_seconds: float = 0.0
    requests: int = 0
    cached: int = 0


def open_llm(cfg: ExtrapolateConfig) -> LLM:
    """A card name, or a path to a GGUF file that is not in the registry."""
    p = Path(cfg.model).expanduser()
    if p.suffix == ".gguf" or p.exists():
        if not p.is_file():
            raise AugurError(f"{p}: no such GGUF file")
        models.KINDS["gguf"].check(p)
        return LLM(p, name=p.stem, sha256=sha256_file(p), prompting=cfg.prompting,
                   n_threads=cfg.threads, n_gpu_layers=cfg.gpu_layers)
    card, path, sha = models.ensure(cfg.model)
    if card.kind != "gguf":
        raise AugurError(f"model '{card.name}' is a {card.kind} model; extrapolate needs a gguf LLM")
    return LLM.from_card(card, path, sha, prompting=cfg.prompting, n_threads=cfg.threads, n_gpu_layers=cfg.gpu_layers)


def open_embedder() -> Embedder:
    card, path, sha = models.ensure(EMBEDDER)
    return Embedder(path, sha)


class ListGenerator:
    """Asks the LLM for a list until enough items pass `accept`, one cached request per attempt."""

    def __init__(self, llm: LLM, cfg: ExtrapolateConfig, cache: JsonCache):
        self.llm, self.cfg, self.cache = llm, cfg, cache
        self.stats = Stats()

    def _request(self, template: Template, fields: dict[str, str], seed: int, sampling: Sampling) -> dict[str, Any]:
        if self.llm.prompting == "chat":
            g = self.llm.chat(template.messages(**fields), seed=seed, sampling=sampling)
        else:
            g = self.llm.complete(template.prefix(), template.suffix(**fields), seed=seed, sampling=sampling,
                                  stop=BASE_STOPS)
            g.text = template.answer_head + g.text  # the bullet of the first line was part of the prompt
        self.stats.new_tokens += g.completion_tokens
        self.stats.gen_seconds += g.seconds
        return asdict(g)

    def generate(self, template: Template, fields: dict[str, str], want: int,
                 accept: Callable[[str, str | None], str | None]) -> ListResult:
        sampling = Sampling(**{**self.cfg.sampling.as_dict(),
                               "max_tokens": min(self.cfg.sampling.max_tokens, TOKENS_PER_ITEM * (want + 2))})
        items: list[tuple[str, str | None]] = []
        rejected: Counter = Counter()
        attempt = 0
        while attempt < self.cfg.max_attempts and len(items) < want:
            seed = derive_seed(self.cfg.seed, template.id, fields, attempt)
            key = key_of(self.llm.sha256, self.llm.prompting, template.id, fields, seed, sampling.as_dict())
            gen, hit = self.cache.get_or_compute(key, lambda: self._request(template, fields, seed, sampling))
            self.stats.requests += 1
            self.stats.cached += hit
            attempt += 1
            for item, text in parse_lines(gen["text"], truncated=gen["finish_reason"] == "length"):
                reason = accept(item, text)
                if reason:
                    rejected[reason] += 1
                    continue
                items.append((item, text))
                if len(items) == want:
                    break
        if not items and attempt == 0:
            rejected["no attempt"] += 1
        return ListResult(items, want, attempt, rejected)


def _semantic(embedder: Embedder | None, cfg: ExtrapolateConfig, avoid: list[str]) -> SemanticFilter | None:
    return SemanticFilter(embedder, cfg.semantic_threshold, avoid) if embedder is not None else None


def _acceptor(check: Callable[[str, str | None], str | None], seen: set[str],
              sem: SemanticFilter | None) -> Callable[[str, str | None], str | None]:
    """Chain: structural check → normalised duplicate → word-level near duplicate → semantic duplicate."""
    kept: list[str] = []

    def accept(item: str, text: str | None) -> str | None:
        reason = check(item, text)
        if reason:
            return reason
        k = norm_key(item)
        if k in seen:
            return "duplicate"
        if near_duplicate(item, kept):
            return "near duplicate"
        if sem is not None and (reason := sem.check(item)):
            return reason
        seen.add(k)
        kept.append(item)
        return None

    return accept


def slug(text: str) -> str:
    return "-".join(words(text)) or "x"


class Stage:
    """Shared plumbing of both modes: model, cache, provenance, progress, summary, output files."""

    def __init__(self, cfg: ExtrapolateConfig, out: Path, force: bool, llm: LLM | None = None,
                 embedder: Embedder | None = None):
        cfg.validate()
        self.cfg, self.out, self.force = cfg, Path(out), force
        refuse_overwrite(self.out / "prompts.jsonl", force)
        self.t0 = time.perf_counter()
        self.llm = llm or open_llm(cfg)
        self.embedder = None
        if cfg.semantic_dedup:
            self.embedder = embedder if embedder is not None else open_embedder()
        self.gen = ListGenerator(self.llm, cfg, JsonCache(paths.cache_dir() / "extrapolate"))

    def row_provenance(self, template: Template) -> dict[str, Any]:
        return {"model": self.llm.name, "model_sha256": self.llm.sha256, "template": template.id,
                "seed": self.cfg.seed, "toolkit_version": __version__}

    def run_provenance(self, mode: str, templates: list[Template], inputs: dict[str, Any]) -> dict[str, Any]:
        return {
            "stage": "extrapolate", "mode": mode, "toolkit_version": __version__, **self.llm.provenance(),
            "templates": [t.id for t in templates], "seed": self.cfg.seed, "inputs": inputs,
            "sampling": self.cfg.sampling.as_dict(), "max_attempts": self.cfg.max_attempts,
            "limits": asdict(self.cfg.limits), "threads": self.llm.n_threads,
            "semantic_dedup": ({"model": EMBEDDER, "sha256": self.embedder.sha256,
                                "onnx_sha256": self.embedder.onnx_sha256,
                                "threshold": self.cfg.semantic_threshold} if self.embedder else None),
        }

    def progress(self, items: list, desc: str):
        return tqdm(items, desc=desc, unit="item", disable=not self.cfg.progress, file=sys.stderr, leave=False)

    def summary(self, what: str, n_prompts: int, statuses: list[str]) -> dict[str, Any]:
        wall = time.perf_counter() - self.t0
        st = self.gen.stats
        counts = Counter(statuses)
        return {"items": len(statuses), "status_counts": dict(sorted(counts.items())), "prompts": n_prompts,
                "new_tokens": st.new_tokens, "requests": st.requests, "cached_requests": st.cached,
                "generation_seconds": round(st.gen_seconds, 3), "wall_seconds": round(wall, 3),
                "tokens_per_second": round(st.new_tokens / wall, 2) if wall > 0 else 0.0,
                "line": (f"extrapolate {what}: {len(statuses)} {'classes' if what == 'domains' else 'groups'} "
                         f"({', '.join(f'{v} {k}' for k, v in sorted(counts.items()))}), {n_prompts} prompts; "
                         f"{st.new_tokens} new tokens at {st.new_tokens / wall if wall else 0:.1f} tok/s "
                         f"({st.cached}/{st.requests} requests cached); {wall:.1f} s → {self.out / 'prompts.jsonl'}")}

    def write(self, run: dict[str, Any], files: dict[str, list[dict[str, Any]]]) -> None:
        # prompts.jsonl is written last: its presence means the stage finished.
        write_json(self.out / "run.json", run)
        for name, rows in files.items():
            write_jsonl(self.out / name, rows)


def extrapolate_domains(classes: list[str], domains_per_class: int, out: Path, *,
                        exclude_domains: list[str] = (), cfg: ExtrapolateConfig | None = None,
                        force: bool = False, llm: LLM | None = None,
                        embedder: Embedder | None = None) -> dict[str, Any]:
    cfg = cfg or ExtrapolateConfig()
    if not classes:
        raise AugurError("the class list is empty")
    if domains_per_class < 1:
        raise AugurError("--domains-per-class must be at least 1")
    stage = Stage(cfg, out, force, llm, embedder)
    exclude = [e.replace("_", " ").strip() for e in exclude_domains if e.strip()]
    resolved = [classnames.resolve(c) for c in classes]
    foreign = {w for s in DOMAINS.subjects for w in words(s)}
    rows, per_class = [], []
    for cn in stage.progress(resolved, "extrapolate domains"):
        def check(domain: str, prompt: str | None, cn=cn) -> str | None:
            return check_domain(domain, prompt, cn.content_words, exclude, cfg.limits)

        sem = _semantic(stage.embedder, cfg, exclude + [cn.phrase])
        res = stage.gen.generate(DOMAINS, {"cls": cn.phrase, "avoid": ", ".join(exclude) or "none"},
                                 domains_per_class, _acceptor(check, set(), sem))
        for domain, prompt in res.items:
            rows.append({"id": f"{slug(cn.label)}--{slug(domain)}", "class": cn.label, "class_phrase": cn.phrase,
                         "domain": slug(domain), "domain_text": domain,
                         "prompt": compose_prompt(domain, prompt, cn.phrase, cn.content_words, foreign),
                         "provenance": stage.row_provenance(DOMAINS)})
        per_class.append({"class": cn.label, "phrase": cn.phrase, "status": res.status, "kept": len(res.items),
                          "wanted": res.wanted, "attempts": res.attempts, "rejected": dict(sorted(res.rejected.items()))})
    summary = stage.summary("domains", len(rows), [c["status"] for c in per_class])
    inputs = {"classes": list(classes), "domains_per_class": domains_per_class, "exclude_domains": exclude}
    run = {"provenance": stage.run_provenance("domains", [DOMAINS], inputs), "classes": per_class, "summary": summary}
    stage.write(run, {"prompts.jsonl": rows})
    return run


def extrapolate_realm(realm: str, out: Path, *, groups: int = 6, classes_per_group: int = 8,
                      cfg: ExtrapolateConfig | None = None, force: bool = False, llm: LLM | None = None,
                      embedder: Embedder | None = None) -> dict[str, Any]:
    cfg = cfg or ExtrapolateConfig()
    realm = realm.strip()
    if not words(realm):
        raise AugurError("the realm is empty; give one like 'birds' or 'cars'")
    if groups < 1 or classes_per_group < 1:
        raise AugurError("--groups and --classes-per-group must be at least 1")
    stage = Stage(cfg, out, force, llm, embedder)
    group_res = stage.gen.generate(
        GROUPS, {"realm": realm}, groups,
        _acceptor(lambda g, _t: check_group(g, realm, cfg.limits), set(), _semantic(stage.embedder, cfg, [realm])))
    taken: set[str] = {norm_key(realm)}
    class_sem = _semantic(stage.embedder, cfg, [realm])
    class_rows, prompt_rows, per_group = [], [], []
    for group, _ in stage.progress(group_res.items, f"extrapolate realm '{realm}'"):
        taken.add(norm_key(group))
        res = stage.gen.generate(
            CLASSES, {"realm": realm, "group": group}, classes_per_group,
            _acceptor(lambda c, d: check_class(c, d, taken, cfg.limits), taken, class_sem))
        for name, desc in res.items:
            prov = stage.row_provenance(CLASSES)
            class_rows.append({"class": name, "group": group, "realm": realm, "description": desc, "provenance": prov})
            prompt_rows.append({"id": slug(name), "class": name, "class_phrase": name, "domain": "photo",
                                "group": group, "prompt": f"A photograph of a {name}: {desc}", "provenance": prov})
        per_group.append({"group": group, "status": res.status, "kept": len(res.items), "wanted": res.wanted,
                          "attempts": res.attempts, "rejected": dict(sorted(res.rejected.items()))})
    summary = stage.summary("realm", len(prompt_rows), [g["status"] for g in per_group])
    inputs = {"realm": realm, "groups": groups, "classes_per_group": classes_per_group}
    run = {"provenance": stage.run_provenance("realm", [GROUPS, CLASSES], inputs),
           "groups": {"status": group_res.status, "kept": len(group_res.items), "wanted": groups,
                      "attempts": group_res.attempts, "rejected": dict(sorted(group_res.rejected.items()))},
           "per_group": per_group, "summary": summary}
    if not group_res.items:
        stage.write(run, {})
        raise AugurError(f"the model produced no usable groups for realm '{realm}' after {group_res.attempts} "
                         f"attempts; see {stage.out / 'run.json'}")
    stage.write(run, {"classes.jsonl": class_rows, "prompts.jsonl": prompt_rows})
    return run
