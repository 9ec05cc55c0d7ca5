"""The settings of `augur extrapolate` (one source: CLI options, recipe keys, validation)."""

from __future__ import annotations

from dataclasses import dataclass

from ...core.settings import SettingError, ShowsProgress, quiet_setting, seed_setting, setting

PROMPTING = ("auto", "base", "chat")
MODES = ("domains", "realm")


@dataclass
class LLMSettings(ShowsProgress):
    """What every extrapolation mode shares: the model, sampling, retries, filters, compute."""

    model: str = setting("gemma3-270m-q4km", "A model card name (augur models list) or a path to a .gguf file.",
                         metavar="CARD|FILE")
    seed: int = seed_setting()
    prompting: str = setting("auto", "Few-shot completion (base models) or chat template (instruct models); "
                                     "auto: from the card, else from the GGUF metadata.", choices=PROMPTING)
    temperature: float | None = setting(None, "Sampling temperature (default 0.8; 0.2 for --style premonition, as "
                                              "its notebook samples).", min=0.0, max=2.0, none_word="auto")
    max_attempts: int = setting(10, "At most this many LLM requests per list (each asks for what is still wanted "
                                    "and lists what is kept).", min=1, max=1000)
    patience: int = setting(2, "Attempts in a row that add nothing new before a list stops short of its count.",
                            min=1, max=100)
    min_fraction: float = setting(0.9, "Fail (writing run.json, no prompts) when fewer than this fraction of the "
                                       "items asked for are kept in all; 0 keeps whatever comes.", min=0.0, max=1.0)
    semantic_dedup: bool = setting(True, "Drop near-duplicates by all-MiniLM-L6-v2 similarity.")
    semantic_threshold: float = setting(0.8, "Cosine similarity at or above which a new item is a duplicate.",
                                        min=0.0, min_open=True, max=1.0)
    threads: int | None = setting(None, "CPU threads for llama.cpp (default: one on a 2-core machine, else all cores but one; docs/benchmarks.md).",
                                  min=1, max=1024, none_word="auto")
    parallel: int | None = setting(None, "Independent requests decoded together in one llama.cpp context "
                                         "(default: what benchmarks/bench_extrapolate.py found best here).",
                                   min=1, max=64, none_word="auto")
    gpu_layers: int = setting(-1, "Layers offloaded to the GPU in a CUDA build of llama.cpp (-1: all).", min=-1)
    ctx: int | None = setting(None, "Tokens of context per request, prompt and answer (auto: the longest request "
                                    "the run can make, within the model's trained context).",
                              min=256, max=1 << 20, none_word="auto")
    grammar: bool = setting(False, "Constrain every answer to its list format with a GBNF grammar in llama.cpp's "
                                   "sampler (lines of the template's fields, nothing else; slower per token: "
                                   "docs/benchmarks.md).")
    force: bool = setting(False, "Replace an earlier extrapolation in --out.", is_flag=True, recipe=False)
    quiet: bool = quiet_setting()


@dataclass
class DomainsConfig(LLMSettings):
    """Beyond Finite Data: novel domains per class."""

    classes: list[str] | None = setting(None, "Comma-separated class names; 'crane (bird)' picks a sense.")
    classes_file: str | None = setting(None, "A file of class names, one per line (or commas).", metavar="FILE")
    dataset: str | None = setting(None, "A DomainBed-layout folder ROOT/<domain>/<class>/: its classes, and "
                                        "its domains as --exclude-domains.", metavar="DIR")
    domains_per_class: int = setting(8, "Domains to imagine per class.", min=1, max=1000, flags=("-n",))
    exclude_domains: list[str] | None = setting(None, "Domains to avoid, e.g. art_painting,cartoon,photo,sketch "
                                                      "(default: the dataset's own, with --dataset).")
    style: str = setting("augur", "augur: the list straight away; reasoning: Beyond Finite Data's role prompt with a "
                                  "reasoning step before the list (read past: never an item or a prompt).",
                         choices=("augur", "reasoning"))

    def check(self) -> None:
        given = [n for n in ("classes", "classes_file", "dataset") if getattr(self, n)]
        if len(given) != 1:
            raise SettingError("classes", "give the classes once: --classes a,b,c or --classes-file FILE or "
                                          "--dataset DIR")


@dataclass
class RealmConfig(LLMSettings):
    """Premonition: a realm's sub-groups and their classes, with visual descriptions."""

    realm: str = setting("birds", "The realm, e.g. birds or cars.", cli=False)
    style: str = setting("augur", "augur: groups of similar-looking classes with visual descriptions; premonition: "
                                  "the paper's notebook (scientific orders, species with Latin names, descriptions "
                                  "of at most 180 characters that tell a species apart, prompts 'A photograph of a "
                                  "{common} ({latin}): {description}', temperature 0.2 unless given).",
                         choices=("augur", "premonition"))
    groups: int = setting(6, "Sub-groups to predict.", min=1, max=200)
    classes_per_group: int = setting(8, "Classes to predict per group.", min=1, max=200)
    # Measured with the shipped MiniLM on name + description: distinct fine-grained classes reach 0.88 (BMW 3 /
    # 5 Series), the same species under a second name with its description 0.93 (house / English sparrow).
    # Bare names are useless for this: house / tree sparrow 0.81, Audi A4 / A6 0.90 (tests/test_extrapolate.py).
    class_semantic_threshold: float = setting(
        0.92, "Cosine similarity of two classes' 'name: description' texts at or above which the later one is "
              "a duplicate (realm classes; --semantic-threshold is for domains and groups).",
        min=0.0, min_open=True, max=1.0)
