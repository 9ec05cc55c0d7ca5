"""The extrapolate stage on the real embedded Gemma 3 270M model (no mock of the LLM)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_then_kill

from toolkit import __version__
from toolkit.extrapolate import ExtrapolateConfig, extrapolate_domains, extrapolate_realm
from toolkit.fileio import read_jsonl
from toolkit.quality import check_domain, norm_key
from toolkit import classnames

GEMMA_SHA = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
CLASSES = ["heron", "guitar"]
EXCLUDE = ["photo", "sketch"]


def cfg(**kw) -> ExtrapolateConfig:
    return ExtrapolateConfig(progress=False, **kw)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, llm, embedder):
    """One uninterrupted run that other tests compare against (its own cache)."""
    out = tmp_path_factory.mktemp("ref")
    os.environ["AUGUR_CACHE_DIR"] = str(out / "cache")
    try:
        run = extrapolate_domains(CLASSES, 3, out, exclude_domains=EXCLUDE, cfg=cfg(), llm=llm, embedder=embedder)
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
        assert check_domain(r["domain_text"], r["prompt"], cn.content_words, EXCLUDE, ExtrapolateConfig().limits) is None
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
    run = extrapolate_domains(CLASSES, 3, again, exclude_domains=EXCLUDE, cfg=cfg(), llm=llm, embedder=embedder)
    assert run["summary"]["cached_requests"] == 0
    assert (again / "prompts.jsonl").read_bytes() == (out / "prompts.jsonl").read_bytes()
    other = tmp_path / "other"
    extrapolate_domains(CLASSES, 3, other, exclude_domains=EXCLUDE, cfg=cfg(seed=1), llm=llm, embedder=embedder)
    assert (other / "prompts.jsonl").read_bytes() != (out / "prompts.jsonl").read_bytes()


def test_rerun_is_served_from_cache(tmp_path, llm, embedder):
    first = extrapolate_domains(["lighthouse"], 2, tmp_path / "a", cfg=cfg(), llm=llm, embedder=embedder)
    second = extrapolate_domains(["lighthouse"], 2, tmp_path / "b", cfg=cfg(), llm=llm, embedder=embedder)
    assert first["summary"]["new_tokens"] > 0
    assert second["summary"]["new_tokens"] == 0
    assert second["summary"]["cached_requests"] == second["summary"]["requests"] > 0
    assert (tmp_path / "a" / "prompts.jsonl").read_bytes() == (tmp_path / "b" / "prompts.jsonl").read_bytes()


def test_resume_after_kill_matches_uninterrupted_run(reference, tmp_path):
    """Kill a real `augur extrapolate` process mid-run, run it again: same bytes as a clean run."""
    ref_out, _ = reference
    out = tmp_path / "killed"
    env = {**os.environ, "AUGUR_CACHE_DIR": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "cli", "extrapolate", "domains", "--classes", ",".join(CLASSES), "-n", "3",
           "--exclude-domains", ",".join(EXCLUDE), "--out", str(out), "--quiet"]
    cwd = Path(__file__).resolve().parent.parent
    cache = tmp_path / "cache" / "extrapolate"
    run_then_kill(cmd, lambda: bool(list(cache.rglob("*.json"))), env=env)
    done = len(list(cache.rglob("*.json")))
    assert done >= 1
    assert not (out / "prompts.jsonl").exists()  # nothing looks complete
    res = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert f"({done}/" in res.stdout  # the finished requests came from the cache
    assert (out / "prompts.jsonl").read_bytes() == (ref_out / "prompts.jsonl").read_bytes()


def test_unservable_class_is_recorded_not_dropped(tmp_path, llm, embedder):
    # More domains than one request can hold and a single attempt: the class cannot be fully served.
    run = extrapolate_domains(["teacup"], 40, tmp_path, cfg=cfg(max_attempts=1), llm=llm, embedder=embedder)
    (c,) = run["classes"]
    assert c["class"] == "teacup" and c["status"] in ("partial", "failed") and c["attempts"] == 1
    assert c["kept"] == len(read_jsonl(tmp_path / "prompts.jsonl")) < 40


def test_without_semantic_dedup(tmp_path, llm):
    run = extrapolate_domains(["lighthouse"], 2, tmp_path, cfg=cfg(semantic_dedup=False), llm=llm)
    assert run["provenance"]["semantic_dedup"] is None
    assert run["classes"][0]["kept"] >= 1


def test_realm_mode(tmp_path, llm, embedder):
    run = extrapolate_realm("birds", tmp_path, groups=2, classes_per_group=3, cfg=cfg(), llm=llm, embedder=embedder)
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


def test_chat_prompting_path_runs_and_records(tmp_path, llm, embedder):
    """A base model forced through its chat template: output may be poor, but it parses and is recorded."""
    from toolkit.llm import LLM

    chat = LLM(llm.path, name=llm.name, sha256=llm.sha256, prompting="chat")
    run = extrapolate_domains(["lighthouse"], 2, tmp_path, cfg=cfg(max_attempts=1), llm=chat, embedder=embedder)
    assert run["provenance"]["prompting"] == "chat"
    assert run["classes"][0]["status"] in ("ok", "partial", "failed")
    assert len(read_jsonl(tmp_path / "prompts.jsonl")) == run["classes"][0]["kept"]
