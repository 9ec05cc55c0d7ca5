"""The extrapolate stage on the real embedded Gemma 3 270M model (no mock of the LLM)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import killed_at

from cli import main

from toolkit import __version__
from toolkit.core.files import read_jsonl
from toolkit.stages.extrapolate import classnames, clip_tokens
from toolkit.stages.extrapolate.config import DomainsConfig, RealmConfig
from toolkit.stages.extrapolate.stage import LIMITS, extrapolate_domains, extrapolate_realm
from toolkit.stages.extrapolate.quality import check_domain, norm_key

GEMMA_SHA = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
CLASSES = ["heron", "guitar"]
EXCLUDE = ["photo", "sketch"]


# These tests check rows, caching and resumes, not how much the 270M base model manages to list: no share of
# the count is required of it here (min_fraction has its own tests below).
def cfg(classes=CLASSES, n=3, exclude=EXCLUDE, **kw) -> DomainsConfig:
    kw.setdefault("min_fraction", 0.0)
    return DomainsConfig(classes=list(classes), domains_per_class=n, exclude_domains=list(exclude), quiet=True, **kw)


def realm(name="birds", groups=2, per_group=3, **kw) -> RealmConfig:
    kw.setdefault("min_fraction", 0.0)
    return RealmConfig(realm=name, groups=groups, classes_per_group=per_group, quiet=True, **kw)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, llm, embedder):
    """One uninterrupted run that other tests compare against (its own cache)."""
    out = tmp_path_factory.mktemp("ref")
    os.environ["AUGUR_CACHE_DIR"] = str(out / "cache")
    try:
        run = extrapolate_domains(cfg(), out, llm=llm, embedder=embedder).data
    finally:
        os.environ.pop("AUGUR_CACHE_DIR")
    return out, run


def test_domains_rows_filters_and_provenance(reference):
    out, run = reference
    rows = read_jsonl(out / "prompts.jsonl")
    assert rows, "the model produced no prompts at all"
    statuses = {c["class"]: c for c in run["classes"]}
    assert set(statuses) == set(CLASSES)  # every class is recorded, served or not
    for name in CLASSES:
        kept = [r for r in rows if r["class"] == name]
        assert len(kept) == statuses[name]["kept"] <= 3
        assert statuses[name]["status"] == ("ok" if len(kept) == 3 else "partial" if kept else "failed")
        keys = [norm_key(r["domain_text"]) for r in kept]
        assert len(keys) == len(set(keys))
    assert sum(c["status"] == "ok" for c in run["classes"]) >= 1
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids))
    for r in rows:
        cn = classnames.resolve(r["class"])
        assert check_domain(r["domain_text"], r["prompt"], cn.content_words, EXCLUDE, LIMITS) is None
        assert r["prompt"].strip() and len(r["prompt"]) <= 240
        assert r["provenance"] == {"model": "gemma3-270m-q4km", "model_sha256": GEMMA_SHA,
                                   "template": run["provenance"]["templates"][0], "seed": 0,
                                   "toolkit_version": __version__}
    prov = run["provenance"]
    assert prov["prompting"] == "base" and prov["semantic_dedup"]["model"] == "all-minilm-l6-v2"
    assert run["summary"]["new_tokens"] > 0 and run["summary"]["cached_requests"] == 0


def test_same_seed_is_byte_identical_and_seed_matters(reference, tmp_path, llm, embedder):
    out, _ = reference
    again = tmp_path / "again"  # fresh cache (isolated_cache fixture): everything is recomputed
    run = extrapolate_domains(cfg(), again, llm=llm, embedder=embedder).data
    assert run["summary"]["cached_requests"] == 0
    assert (again / "prompts.jsonl").read_bytes() == (out / "prompts.jsonl").read_bytes()
    other = tmp_path / "other"
    extrapolate_domains(cfg(seed=1), other, llm=llm, embedder=embedder)
    assert (other / "prompts.jsonl").read_bytes() != (out / "prompts.jsonl").read_bytes()


def test_batched_and_sequential_generation_give_the_same_bytes(tmp_path, monkeypatch, llm, embedder):
    """--parallel 1 (one request at a time) and the default batched decoder (several requests in one
    llama.cpp batch, the shared few-shot prefix computed once): the same prompts.jsonl bytes."""
    import dataclasses

    from toolkit.stages.extrapolate.stage import open_llm

    classes = ["heron", "guitar", "teapot", "lighthouse", "violin"]
    assert llm.parallel >= len(classes)  # the default really decodes these requests together
    sequential = open_llm(dataclasses.replace(DomainsConfig(), parallel=1))
    monkeypatch.setenv("AUGUR_CACHE_DIR", str(tmp_path / "cache1"))
    one = extrapolate_domains(cfg(classes, 4, []), tmp_path / "one", llm=sequential, embedder=embedder).data
    monkeypatch.setenv("AUGUR_CACHE_DIR", str(tmp_path / "cache8"))
    many = extrapolate_domains(cfg(classes, 4, []), tmp_path / "many", llm=llm, embedder=embedder).data
    assert one["summary"]["cached_requests"] == many["summary"]["cached_requests"] == 0
    assert one["summary"]["requests"] == many["summary"]["requests"] >= len(classes)
    assert (tmp_path / "one" / "prompts.jsonl").read_bytes() == (tmp_path / "many" / "prompts.jsonl").read_bytes()
    assert len(read_jsonl(tmp_path / "one" / "prompts.jsonl")) >= 10


def test_a_grammar_leaves_the_sampler_only_what_it_allows(llm):
    """A GBNF grammar in the request's sampler chain: a grammar with one sentence gets that sentence, whatever
    the seed, and then the end (the answer is complete); the same request without it writes something else."""
    from toolkit.stages.extrapolate.llm import Sampling
    from toolkit.stages.extrapolate.templates import DOMAINS

    pre, tokens = llm.base_prompt(DOMAINS.prefix(), DOMAINS.suffix(cls="zebra", avoid="none", listed="none", n="3"))
    only = " zebra crossing | a zebra on a pedestrian crossing"
    grammar = f'root ::= "{only}"\n'
    jobs = [(pre, tokens, seed, Sampling(max_tokens=48, grammar=grammar), ["\n\n"], seed) for seed in (1, 2, 3)]
    jobs.append((pre, tokens, 1, Sampling(max_tokens=48), ["\n\n"], 0))
    *constrained, free = llm.generate(jobs)
    assert [(g.text, g.finish_reason) for g in constrained] == [(only, "stop")] * 3
    assert free.text != only


def test_grammar_runs_keep_the_list_format_and_record_it(tmp_path, monkeypatch, llm, embedder):
    """--grammar: every line of every answer is a template line (domain | prompt), and run.json holds the GBNF
    text each template's answers were drawn with; off, the run's identity is what it was before the option."""
    import json
    import re

    from toolkit.stages.extrapolate.stage import identity_of
    from toolkit.stages.extrapolate.templates import DOMAINS

    monkeypatch.setenv("AUGUR_CACHE_DIR", str(tmp_path / "cache"))
    run = extrapolate_domains(cfg(["heron"], 3, [], grammar=True), tmp_path / "g", llm=llm, embedder=embedder).data
    answers = [json.loads(p.read_text()) for p in (tmp_path / "cache").rglob("*.json")]
    assert answers and run["summary"]["requests"] == len(answers)
    line = re.compile(r"-[^|\n]+ \| [^|\n]+")
    for a in answers:
        lines = a["text"].rstrip("\n").split("\n")
        whole = lines if a["finish_reason"] == "stop" else lines[:-1]  # a line cut by max_tokens is dropped
        assert whole and all(line.fullmatch(x) for x in whole), a["text"]
    record = json.loads((tmp_path / "g" / "run.json").read_text())
    assert record["provenance"]["grammar"] == {DOMAINS.id: DOMAINS.grammar(chat=False, max_item_chars=LIMITS.max_item_chars)}
    assert "grammar" not in identity_of({"grammar": False, "seed": 0}) and identity_of({"grammar": True})


def test_the_context_is_sized_from_need_and_does_not_change_the_answers(tmp_path, monkeypatch, embedder):
    """--ctx auto: the longest request the run can make, rounded up to 256 tokens (the KV cache is slots x
    context, so it is sized from the work, not the model's maximum); --ctx N as given. The answers are the
    same bytes either way: a context that only grows between generations changes nothing."""
    from toolkit.core.cache import JsonCache
    from toolkit.stages.extrapolate.stage import ItemList, ListGenerator, open_llm
    from toolkit.stages.extrapolate.templates import DOMAINS

    monkeypatch.setenv("AUGUR_CACHE_DIR", str(tmp_path / "cache-auto"))
    fresh = open_llm(DomainsConfig())  # the session's model may have grown its context for other tests
    auto = extrapolate_domains(cfg(), tmp_path / "auto", llm=fresh, embedder=embedder).data
    lists = [ItemList({"cls": c, "avoid": ", ".join(EXCLUDE)}, 3) for c in CLASSES]
    need = ListGenerator(fresh, cfg(), JsonCache(tmp_path / "unused")).context_need(DOMAINS, lists)
    p = auto["provenance"]
    assert p["context_choice"] == "auto" and p["context"] == -(-need // 256) * 256 < 4096, (p["context"], need)
    assert p["trained_context"] == 32768  # Gemma 3 270M's, from its GGUF
    monkeypatch.setenv("AUGUR_CACHE_DIR", str(tmp_path / "cache-fixed"))
    fixed = extrapolate_domains(cfg(ctx=3072), tmp_path / "fixed", llm=open_llm(DomainsConfig(ctx=3072)),
                                embedder=embedder).data
    assert (fixed["provenance"]["context"], fixed["provenance"]["context_choice"]) == (3072, "--ctx")
    assert fixed["summary"]["cached_requests"] == 0
    assert (tmp_path / "auto" / "prompts.jsonl").read_bytes() == (tmp_path / "fixed" / "prompts.jsonl").read_bytes()
    # a context too small for the prompt, or beyond what the model was trained with: one line each
    base = ["extrapolate", "domains", "--classes", "heron", "-n", "2", "--quiet"]
    for ctx, says in (("256", "use a larger --ctx"), ("40000", "more than the 32768 tokens of context")):
        res = CliRunner().invoke(main, [*base, "--ctx", ctx, "--out", str(tmp_path / f"ctx{ctx}")])
        assert res.exit_code == 1 and says in res.output and len(res.output.strip().splitlines()) == 1, res.output


def test_rerun_is_served_from_cache(tmp_path, llm, embedder):
    first = extrapolate_domains(cfg(["lighthouse"], 2, []), tmp_path / "a", llm=llm, embedder=embedder).data
    second = extrapolate_domains(cfg(["lighthouse"], 2, []), tmp_path / "b", llm=llm, embedder=embedder).data
    assert first["summary"]["new_tokens"] > 0
    assert second["summary"]["new_tokens"] == 0
    assert second["summary"]["cached_requests"] == second["summary"]["requests"] > 0
    assert (tmp_path / "a" / "prompts.jsonl").read_bytes() == (tmp_path / "b" / "prompts.jsonl").read_bytes()


@pytest.mark.parametrize("parallel", ["1", "8"])
def test_resume_after_kill_matches_uninterrupted_run(reference, tmp_path, parallel):
    """Kill a real `augur extrapolate` process mid-run, run it again: same bytes as a clean run, and the
    requests the killed run finished are served from the cache."""
    ref_out, _ = reference
    out = tmp_path / "killed"
    env = {**os.environ, "AUGUR_CACHE_DIR": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "cli", "extrapolate", "domains", "--classes", ",".join(CLASSES), "-n", "3",
           "--exclude-domains", ",".join(EXCLUDE), "--out", str(out), "--quiet", "--parallel", parallel,
           "--min-fraction", "0"]
    cwd = Path(__file__).resolve().parent.parent
    cache = tmp_path / "cache" / "extrapolate"
    killed_at(cmd, "extrapolate.request:2", env=env)  # a request finished and cached, others not
    before = {p: p.read_bytes() for p in cache.rglob("*.json")}
    assert before
    assert not (out / "prompts.jsonl").exists()  # nothing looks complete
    res = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert all(p.read_bytes() == b for p, b in before.items())
    if parallel == "1":
        # one slot: nothing is speculative, so every finished request is one the run consumes
        assert f"({len(before)}/" in res.stdout
    assert (out / "prompts.jsonl").read_bytes() == (ref_out / "prompts.jsonl").read_bytes()


def test_unservable_class_is_recorded_not_dropped(tmp_path, llm, embedder):
    # More domains than one request can hold and a single attempt: the class cannot be fully served.
    run = extrapolate_domains(cfg(["teacup"], 40, [], max_attempts=1), tmp_path, llm=llm, embedder=embedder).data
    (c,) = run["classes"]
    assert c["class"] == "teacup" and c["attempts"] == 1 and c["wanted"] == 40
    assert c["kept"] == len(read_jsonl(tmp_path / "prompts.jsonl")) < 40
    assert c["status"] == ("partial" if c["kept"] else "failed")  # what it kept decides the status


class ScriptedLLM:
    """Answers request (list, attempt) from a script, finishing queued requests in a chosen order: a stand-in
    for the decoder only, so that the list scheduler itself (ListGenerator, real) can be checked exactly."""

    prompting, n_ctx, sha256, name, n_threads = "base", 4096, "0" * 64, "scripted", 1
    ctx_choice, trained_ctx = "--ctx", 4096

    def fit_context(self, need):  # a fixed context, as --ctx gives
        pass

    def provenance(self):
        return {"model": self.name, "model_sha256": self.sha256, "prompting": self.prompting}

    def __init__(self, script: dict[tuple[int, int], str], lifo: bool = False, answer=None):
        self.script, self.lifo, self.answer = script, lifo, answer  # answer(query text, attempt): by query
        self.texts: list[str] = []
        self.asked: dict[tuple[int, int], tuple[str, int]] = {}  # (list, attempt) -> (query, max_tokens)

    def base_prompt(self, prefix: str, suffix: str):
        self.texts.append(suffix)
        return [0], [0, len(self.texts) - 1]

    def generate(self, jobs, on_done):
        from toolkit.stages.extrapolate.decode import Generation

        queue = list(jobs)
        while queue:
            pre, tokens, seed, sampling, stops, ticket = queue.pop() if self.lifo else queue.pop(0)
            self.asked[(ticket.item, ticket.attempt)] = (self.texts[tokens[1]], sampling.max_tokens)
            text = (self.answer(self.texts[tokens[1]], ticket.attempt) if self.answer is not None
                    else self.script.get((ticket.item, ticket.attempt), "- "))
            queue += on_done(ticket, Generation(text[1:], 5, 5, "stop", 0.0))  # the "-" is the prompt's


def scheduled(lifo: bool, tmp_path):
    from toolkit.core.cache import JsonCache
    from toolkit.stages.extrapolate.stage import ListGenerator, _acceptor
    from toolkit.stages.extrapolate.templates import DOMAINS

    script = {(0, 0): "- a1\n- a2", (0, 1): "- a2\n- x\n- a3", (0, 2): "- a4\n- a5\n- a6",
              (1, 0): "- x\n- b1", (1, 1): "- b1", (1, 2): "- a1",  # nothing new twice in a row: it stops
              (2, 0): "- c1", (2, 1): "- c2", (2, 2): "- c3"}  # one new each time, up to max_attempts
    llm = ScriptedLLM(script, lifo)
    gen = ListGenerator(llm, DomainsConfig(classes=["a"], max_attempts=3, patience=2, quiet=True),
                        JsonCache(tmp_path / ("lifo" if lifo else "fifo")))
    seen: set[str] = set()  # shared by the three lists, as the realm's taken names are
    items = [{"cls": c, "avoid": "none"} for c in ("a", "b", "c")]
    results = gen.generate_all(DOMAINS, items, 5, lambda i: _acceptor(lambda d, t: None, seen, None))
    return results, llm


def test_lists_are_asked_for_the_rest_until_full_or_stuck(tmp_path):
    """Each retry states how many items are still wanted and lists what is kept, with an answer budget that
    scales with that count; a list stops when full, after `patience` attempts that add nothing, or at
    max_attempts; answers are read in rounds (attempt 0 of every list, then attempt 1...), so which list keeps
    a name two lists give ('x') does not depend on which request finished first."""
    from toolkit.stages.extrapolate.stage import TOKENS_PER_ITEM

    results, llm = scheduled(False, tmp_path)
    a, b, c = results
    assert [i for i, _ in a.items] == ["a1", "a2", "a3", "a4", "a5"] and (a.attempts, a.stopped) == (3, "reached")
    assert [i for i, _ in b.items] == ["x", "b1"] and (b.attempts, b.stopped) == (3, "no progress")
    assert [i for i, _ in c.items] == ["c1", "c2", "c3"] and (c.attempts, c.stopped) == (3, "max attempts")
    assert a.rejected == {"duplicate": 2} and b.rejected == {"duplicate": 2}  # x went to b: round 0 is read first
    assert llm.asked[(0, 0)][0].endswith("Already listed: none\n5 new domains:\n-")
    assert llm.asked[(0, 1)][0].endswith("Already listed: a1, a2\n3 new domains:\n-")
    assert llm.asked[(0, 2)][0].endswith("Already listed: a1, a2, a3\n2 new domains:\n-")
    assert [llm.asked[(0, k)][1] for k in range(3)] == [TOKENS_PER_ITEM * (n + 2) for n in (5, 3, 2)]
    assert set(llm.asked) == set(llm.script)  # no request beyond the stopping rules
    lifo, _ = scheduled(True, tmp_path)
    assert [(r.items, r.attempts, r.stopped) for r in lifo] == [(r.items, r.attempts, r.stopped) for r in results]


def test_a_domain_naming_another_target_class_is_rejected_and_a_class_left_empty_fails(tmp_path, monkeypatch):
    """PACS's dog and house: "a dog in front of a house" would teach dg a house in the dog's domain. And a
    class left with no domain at all stops the stage, before anything is rendered for the others."""
    from toolkit.core.errors import AugurError

    script = {(0, 0): "- front yard | a dog in front of a house\n- watercolor | a watercolor painting of a dog",
              (1, 0): "- snowfall | a house in heavy snowfall\n- kennel | a house with a dog kennel beside it"}
    run = extrapolate_domains(cfg(["dog", "house"], 1, [], semantic_dedup=False), tmp_path / "ok",
                              llm=ScriptedLLM(script)).data
    kept = {r["class"]: r["domain_text"] for r in read_jsonl(tmp_path / "ok" / "prompts.jsonl")}
    assert kept == {"dog": "watercolor", "house": "snowfall"}
    assert run["classes"][0]["rejected"] == {"names another class": 1}
    script = {(0, 0): "- watercolor | a watercolor painting of a dog", (1, 0): "- kennel | a house by a dog kennel"}
    monkeypatch.setenv("AUGUR_CACHE_DIR", str(tmp_path / "other-cache"))  # other answers to the same requests
    with pytest.raises(AugurError, match=r"no usable domain for 1 class\(es\): house"):
        extrapolate_domains(cfg(["dog", "house"], 1, [], semantic_dedup=False), tmp_path / "empty",
                            llm=ScriptedLLM(script))
    assert (tmp_path / "empty" / "run.json").is_file() and not (tmp_path / "empty" / "prompts.jsonl").exists()


# 134 characters, 19 words, 85 CLIP tokens in "A photograph of a Pale kite (Milvus albus): ..."
RARE_TOKENS = ("Zygodactyl Pteroglossus xanthogrammus 0x3f9a brk2 qxzv mthwz kyzylkum, 47/19 #b8e; tarsometatarsal 9-k "
               "crests, qjx 77vv zz, pqv 5k wrx")


def test_premonition_style_orders_species_latin_names_and_its_prompts(tmp_path):
    """--style premonition as the paper's notebook: orders, then species with Latin names and short
    descriptions; a second name for a Latin name already kept, a non-binomial and a description over 180
    characters are rejected; labels and prompts name the species as the paper's CSVs do; temperature 0.2."""
    long = "Large raptor " + "golden-brown feathered " * 9  # within the 40-word limit, but 220 characters

    def answer(query: str, attempt: int) -> str:
        if attempt:
            return "- "
        if "new groups" in query:
            return "- Anseriformes\n- Accipitriformes"
        if "Group: Anseriformes" in query:
            return ("- Mallard | Anas platyrhynchos | Dabbling duck, male with a glossy green head and white collar\n"
                    "- Green-headed duck | Anas platyrhynchos | Duck with a green head and a yellow bill\n"
                    "- Mute swan | Cygnus olor | Large white swan with an orange bill and a black knob\n"
                    "- Odd bird | not a latin name | Some bird with some feathers on it")
        return (f"- Red kite | Milvus milvus | Slim raptor with a deeply forked rusty tail\n- Golden eagle | Aquila "
                f"chrysaetos | {long}\n- Pale kite | Milvus albus | {RARE_TOKENS}")

    cfg_ = realm(groups=2, per_group=3, style="premonition", semantic_dedup=False)
    run = extrapolate_realm(cfg_, tmp_path, llm=ScriptedLLM({}, answer=answer)).data
    classes = read_jsonl(tmp_path / "classes.jsonl")
    assert [c["class"] for c in classes] == ["Mallard (Anas platyrhynchos)", "Mute swan (Cygnus olor)",
                                             "Red kite (Milvus milvus)"]
    assert classes[0]["latin_name"] == "Anas platyrhynchos" and classes[0]["common_name"] == "Mallard"
    prompts = read_jsonl(tmp_path / "prompts.jsonl")
    assert prompts[0]["prompt"] == ("A photograph of a Mallard (Anas platyrhynchos): Dabbling duck, male with a glossy "
                                    "green head and white collar")
    assert run["per_group"][0]["rejected"] == {"duplicate": 1, "latin name": 1}
    # within 180 characters and 40 words, but its prompt is over CLIP's 77 tokens: the encoder would cut it
    assert run["per_group"][1]["rejected"] == {"description length": 1, "prompt tokens": 1}
    assert all(clip_tokens.count(p["prompt"]) <= 77 for p in prompts)
    assert run["provenance"]["prompt_tokens"]["limit"] == 77
    prov = run["provenance"]
    assert prov["sampling"]["temperature"] == 0.2 and [t.split("@")[0] for t in prov["templates"]] == [
        "premonition-orders", "premonition-species"]


def test_the_reasoning_style_reads_past_the_reasoning(tmp_path):
    """Beyond Finite Data's role prompt with a reasoning step: the reasoning is asked for, and never becomes an
    item or a prompt."""
    from toolkit.stages.extrapolate.templates import DOMAINS_REASONING

    answer = ("-Reasoning: a heron | stands still, so light and crafts change it most\n"
              "- origami | an origami heron folded from paper\n- neon sign | a heron drawn as a neon sign")
    llm = ScriptedLLM({(0, 0): answer})
    run = extrapolate_domains(cfg(["heron"], 2, [], style="reasoning", semantic_dedup=False), tmp_path, llm=llm).data
    rows = read_jsonl(tmp_path / "prompts.jsonl")
    assert [r["domain_text"] for r in rows] == ["origami", "neon sign"] and run["classes"][0]["rejected"] == {}
    assert all("Reasoning" not in r["prompt"] and "stands still" not in r["prompt"] for r in rows)
    assert run["provenance"]["templates"] == [DOMAINS_REASONING.id]
    assert llm.texts[0].endswith("2 new domains:\nReasoning:")  # a base model is started on its reasoning


def test_real_retries_list_what_is_kept(tmp_path, llm, embedder, monkeypatch):
    """On the real model: every attempt's query lists exactly what its class had kept by then, and asks for
    the rest; a count beyond one request's old 256-token cap gets a budget that fits it."""
    from toolkit.stages.extrapolate.stage import TOKENS_PER_ITEM, ListGenerator

    asked = []
    real_job = ListGenerator._job

    def spy(self, template, lst, attempt, ticket):
        job = real_job(self, template, lst, attempt, ticket)
        asked.append((attempt, lst.query(), job[3].max_tokens))
        return job

    monkeypatch.setattr(ListGenerator, "_job", spy)
    run = extrapolate_domains(cfg(["lighthouse"], 12, []), tmp_path, llm=llm, embedder=embedder).data
    (c,) = run["classes"]
    kept = [r["domain_text"] for r in read_jsonl(tmp_path / "prompts.jsonl")]
    assert len(asked) == c["attempts"] >= 1 and [a for a, _, _ in asked] == list(range(len(asked)))
    for attempt, query, max_tokens in asked:
        listed = [] if query["listed"] == "none" else query["listed"].split(", ")
        assert listed == kept[:len(listed)] and int(query["n"]) == 12 - len(listed)
        assert max_tokens == TOKENS_PER_ITEM * (int(query["n"]) + 2)
    assert asked[0][2] > 256
    assert c["stopped"] in ("reached", "no progress", "max attempts") and (c["stopped"] == "reached") == (c["kept"] == 12)
    line = run["summary"]["line"]
    assert f"{c['kept']}/12 domains kept (lighthouse {c['kept']}/12)" in line


def test_a_run_short_of_min_fraction_fails_in_one_line_and_a_lower_one_resumes(tmp_path):
    """Sixteen domains in one attempt: the embedded model keeps a few, far below the default 0.9. The command
    fails in one line naming the class and its count, leaves run.json and no prompts; the same folder with
    --min-fraction 0 finishes from the cache (the threshold judges a run, it is not part of it)."""
    env = {**os.environ, "AUGUR_CACHE_DIR": str(tmp_path / "cache")}
    out = tmp_path / "out"
    args = [sys.executable, "-m", "cli", "extrapolate", "domains", "--classes", "lighthouse", "-n", "16",
            "--max-attempts", "1", "--quiet", "--out", str(out)]
    cwd = Path(__file__).resolve().parent.parent
    res = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1 and len(lines) == 1 and lines[0].startswith("Error: "), res.stderr
    for fragment in ("kept", "/16 domains", "< min_fraction 0.9", "short: lighthouse ", "run.json"):
        assert fragment in lines[0]
    assert (out / "run.json").is_file() and not (out / "prompts.jsonl").exists()
    res = subprocess.run([*args, "--min-fraction", "0"], env=env, cwd=cwd, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr
    assert "(1/1 requests cached)" in res.stdout and "/16 domains kept (lighthouse " in res.stdout
    assert 0 < len(read_jsonl(out / "prompts.jsonl")) < 15  # 3 here: kept, though short


def test_without_semantic_dedup(tmp_path, llm, embedder):
    """Two domains that only the real MiniLM calls the same (cosine 0.91 >= 0.8; no word-level rule does):
    the semantic filter rejects the second, and without it both are kept."""
    from toolkit.stages.extrapolate.embed import SemanticFilter
    from toolkit.stages.extrapolate.stage import _acceptor

    ok = lambda item, text: None  # noqa: E731 - every structural check passes
    pair = ("snowy winter night", "a winter night in the snow")
    with_sem = _acceptor(ok, set(), SemanticFilter(embedder, 0.8))
    assert [with_sem(d, None) for d in pair] == [None, "semantic duplicate"]
    without = _acceptor(ok, set(), None)
    assert [without(d, None) for d in pair] == [None, None]
    run = extrapolate_domains(cfg(["lighthouse"], 2, [], semantic_dedup=False), tmp_path, llm=llm).data
    assert run["provenance"]["semantic_dedup"] is None
    assert all("semantic" not in reason for c in run["classes"] for reason in c["rejected"])


# Distinct species and models whose names share words, starts or meaning (issue 37, measured with the shipped
# MiniLM): each pair must survive the realm's class filters, in both orders.
FINE_GRAINED = [
    ("house sparrow", "small brown bird with a grey crown, black bib and chestnut nape"),
    ("tree sparrow", "small sparrow with a chestnut crown and a black cheek spot on white cheeks"),
    ("red-tailed hawk", "large buteo with a brick-red tail and a dark belly band"),
    ("red-shouldered hawk", "slender buteo with reddish shoulders, barred orange breast and banded tail"),
    ("BMW 3 Series", "compact executive sedan with kidney grille and twin round headlights"),
    ("BMW 5 Series", "mid-size executive sedan, longer body, kidney grille and slim headlights"),
    ("Audi A4", "compact luxury sedan with a single-frame grille and four rings"),
    ("Audi A6", "executive sedan with a wide single-frame grille and long sleek body"),
    ("American goldfinch", "small finch, bright yellow body with black wings and cap"),
    ("American golden plover", "shorebird with gold-speckled back and black face and belly"),
    ("Blackburnian warbler", "warbler with a flaming orange throat and black back"),
    ("Blackpoll warbler", "warbler with a black cap, white cheeks and streaked flanks"),
    ("Common yellowthroat", "small warbler with a black mask and bright yellow throat"),
    ("Common yellowlegs", "tall shorebird with long bright yellow legs and a thin bill"),
]


def test_fine_grained_classes_are_kept_and_duplicates_still_go(embedder):
    from toolkit.stages.extrapolate.config import RealmConfig
    from toolkit.stages.extrapolate.embed import SemanticFilter
    from toolkit.stages.extrapolate.quality import check_class
    from toolkit.stages.extrapolate.stage import LIMITS, _acceptor

    def acceptor():  # as extrapolate_realm builds it for one realm
        taken = {"bird"}
        return _acceptor(lambda c, d: check_class(c, d, taken, LIMITS), taken,
                         SemanticFilter(embedder, RealmConfig().class_semantic_threshold, ["birds"]), classes=True)

    for rows in (FINE_GRAINED, FINE_GRAINED[::-1]):
        accept = acceptor()
        assert [accept(n, d) for n, d in rows] == [None] * len(rows)
    accept = acceptor()
    for n, d in FINE_GRAINED:
        accept(n, d)
    sparrow = FINE_GRAINED[0][1]
    assert accept("House Sparrows", "a different text about it entirely") == "duplicate"  # normalised name
    assert accept("English sparrow", sparrow) == "semantic duplicate"  # another name, the same bird
    accept = acceptor()
    assert accept("American robin", "thrush with an orange-red breast and grey back") is None
    assert accept("robin", "songbird with an orange-red breast") == "near duplicate"  # every word of it is kept


def test_realm_mode(tmp_path, llm, embedder):
    run = extrapolate_realm(realm(), tmp_path, llm=llm, embedder=embedder).data
    classes = read_jsonl(tmp_path / "classes.jsonl")
    prompts = read_jsonl(tmp_path / "prompts.jsonl")
    assert run["groups"]["kept"] >= 1 and classes, run
    assert [c["class"] for c in classes] == [p["class"] for p in prompts]
    assert len({norm_key(c["class"]) for c in classes}) == len(classes)
    for c, p in zip(classes, prompts):
        assert c["realm"] == "birds" and c["group"] == p["group"] and c["description"]
        assert p["prompt"] == f"A photograph of a {c['class']}: {c['description']}"
        assert p["provenance"]["model_sha256"] == GEMMA_SHA
    assert {g["group"] for g in run["per_group"]} == {c["group"] for c in classes} | {
        g["group"] for g in run["per_group"] if g["status"] == "failed"}
    assert len(run["provenance"]["templates"]) == 2


# Gemma's chat template (the instruct GGUFs carry it; the embedded base model has none)
GEMMA_TEMPLATE = ("{{ bos_token }}{% for message in messages %}<start_of_turn>"
                  "{{ 'model' if message['role'] == 'assistant' else 'user' }}\n{{ message['content'] | trim }}"
                  "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


def test_chat_prompting_path_runs_and_records(tmp_path, llm, embedder):
    """The chat path with a template (given here: the base model's GGUF has none): the prompt is the
    template's rendering, output may be poor, but it parses and is recorded."""
    from toolkit.core.errors import AugurError
    from toolkit.stages.extrapolate.llm import LLM

    with pytest.raises(AugurError, match="no chat template"):
        LLM(llm.path, name=llm.name, sha256=llm.sha256, prompting="chat")
    chat = LLM(llm.path, name=llm.name, sha256=llm.sha256, prompting="base")
    chat.metadata["tokenizer.chat_template"] = GEMMA_TEMPLATE
    chat.prompting = "chat"
    pre, tokens, stops = chat.chat_prompt([{"role": "system", "content": "Be brief."},
                                           {"role": "user", "content": "Name a bird."}])
    assert tokens[:len(pre)] == pre and len(tokens) > len(pre)
    text = chat._llm.detokenize(tokens, special=True).decode()
    assert text.endswith("<start_of_turn>model\n") and "Name a bird." in text
    run = extrapolate_domains(cfg(["lighthouse"], 2, [], max_attempts=1), tmp_path, llm=chat, embedder=embedder).data
    assert run["provenance"]["prompting"] == "chat"
    c = run["classes"][0]
    assert len(read_jsonl(tmp_path / "prompts.jsonl")) == c["kept"]
    assert c["status"] == ("ok" if c["kept"] == c["wanted"] else "partial" if c["kept"] else "failed")


# Gemma-2-it's own chat template (google/gemma-2-2b-it): no system role, and it says so by raising.
GEMMA2_TEMPLATE = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not "
                   "supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != "
                   "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/"
                   "user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' "
                   "%}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\\n' + "
                   "message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}{% if add_generation_prompt %}"
                   "{{'<start_of_turn>model\\n'}}{% endif %}")


def test_a_chat_template_without_a_system_role_gets_the_instruction_in_the_first_user_turn(tmp_path, llm, embedder):
    from toolkit.stages.extrapolate.llm import LLM
    from toolkit.stages.extrapolate.templates import DOMAINS

    chat = LLM(llm.path, name=llm.name, sha256=llm.sha256, prompting="base")
    chat.metadata["tokenizer.chat_template"] = GEMMA2_TEMPLATE
    chat.prompting = "chat"
    pre, tokens, _ = chat.chat_prompt(DOMAINS.messages(cls="lighthouse", avoid="none", listed="none", n="2"))
    text = chat._llm.detokenize(tokens, special=True).decode()
    assert text.count("<start_of_turn>user\n") == len(DOMAINS.examples) + 1 and "<start_of_turn>system" not in text
    first_user = text.split("<start_of_turn>user\n")[1]
    assert first_user.startswith(DOMAINS.instructions) and "Class: accordion" in first_user
    assert tokens[:len(pre)] == pre
    run = extrapolate_domains(cfg(["lighthouse"], 2, [], max_attempts=1), tmp_path, llm=chat, embedder=embedder).data
    assert run["provenance"]["system_role"] == "folded into the first user turn"


PAPER_CSVS = Path(__file__).parent / "data" / "premonition"


@pytest.mark.parametrize("name, classes, groups_min", [("Birds_620classes_for_Table1", 620, 20),
                                                      ("Food_310classes_for_Table1", 310, 5),
                                                      ("Plants_1010classes_for_Table1", 1010, 20)])
def test_the_premonition_papers_csvs_import_whole(tmp_path, name, classes, groups_min):
    """The paper's own CSVs (cl-premonition/premonition, MIT): every row is a class, as its Table 1 counts."""
    import csv

    from toolkit.stages.extrapolate.importer import import_csv

    src = PAPER_CSVS / f"{name}.csv"
    run = import_csv(src, tmp_path / "imp").data
    rows = list(csv.DictReader(src.open(encoding="utf-8-sig")))
    kept = read_jsonl(tmp_path / "imp" / "classes.jsonl")
    prompts = read_jsonl(tmp_path / "imp" / "prompts.jsonl")
    assert run["summary"]["classes"] == len(kept) == len({c["class"] for c in kept}) == classes == len(rows)
    assert [p["prompt"] for p in prompts] == [r["SD_prompt"].strip() for r in rows]  # verbatim, in order
    assert len({p["id"] for p in prompts}) == classes and len({c["group"] for c in kept}) >= groups_min
    assert run["provenance"]["merged_classes"] == {}
    labels = {c["class"] for c in kept}
    if name.startswith("Birds"):  # the two Darwin's Rheas, and one species under two common names, all kept
        assert {"Darwin's Rhea (Rhea pennata pennata)", "Darwin's Rhea (Rhea pennata garleppi)",
                "Chilean Rhea (Rhea pennata pennata)", "Oilbird (Steatornis caripensis)",
                "Guácharo (Steatornis caripensis)"} <= labels
    if name.startswith("Plants"):  # 45 rows without a common name: the Latin name names them
        bare = [c for c in kept if c["common_name"] is None]
        assert len(bare) == 45 and all(c["class"] == c["latin_name"] for c in bare)
        by_class = {p["class"]: p for p in prompts}
        assert all(by_class[c["class"]]["class_phrase"] == c["latin_name"] for c in bare)


def test_a_csv_row_with_no_latin_name_is_one_line(tmp_path):
    from click.testing import CliRunner

    from cli import main

    f = tmp_path / "b.csv"
    f.write_text("subtype,species_latin_name,species_common_name,species_description,SD_prompt\n"
                 "owls,Strix aluco,Tawny Owl,brown owl,A photograph of a tawny owl\n"
                 "owls,,,a bird,A photograph of a bird\n")
    res = CliRunner().invoke(main, ["extrapolate", "import", str(f), "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert f"{f}:3: empty species_latin_name" in res.output.strip().splitlines()[-1]
    assert not (tmp_path / "o" / "prompts.jsonl").exists()
