"""The dataset card: OUT/DATASET.md and OUT/dataset_card.json, the datasheet a paper's appendix needs.

What made the images (the LLM and the generator, with sha256 and licence), how (prompt templates,
seeds, render settings), what they are (classes, domains), what was kept and why (counts before and
after each filter, score distributions and thresholds), how diverse and how far from real data (the set
measures), and the known limits. The render part (generator, LLM, prompts, classes, domains) is
render/card.py's, which `augur render` writes alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...core.files import write_json, write_text
from ..render.card import made_markdown, render_part


def _quantiles(values: list[float]) -> dict[str, Any] | None:
    v = np.array([x for x in values if x is not None], dtype=np.float64)
    if not len(v):
        return None
    q = np.quantile(v, [0.0, 0.1, 0.5, 0.9, 1.0])
    return {"n": int(len(v)), "min": round(q[0], 4), "p10": round(q[1], 4), "median": round(q[2], 4),
            "p90": round(q[3], 4), "max": round(q[4], 4), "mean": round(float(v.mean()), 4)}


def limits_of(quality: dict[str, Any], scorer) -> list[str]:
    out = []
    unscored = quality.get("unscored_classes") or []
    if unscored:
        out.append(f"class agreement unscored for {len(unscored)} class(es) ({', '.join(unscored[:10])}"
                   f"{', …' if len(unscored) > 10 else ''}): the scorer cannot name them, so nothing was checked")
    if scorer.kind == "classifier":
        out.append(f"scorer {scorer.name} is an ImageNet classifier: no CLIPScore against the prompts, and its "
                   "class agreement covers only classes named in ImageNet's class list")
        if len(scorer.scored) == 1:
            out.append("only one class is scored: its zero-shot over one class always agrees")
    if "real" not in quality:
        out.append("no real data given (--real): no distance to real data, no memorisation check")
    elif scorer.kind != "clip":
        out.append("CMMD needs a CLIP scorer: not computed; the Fréchet distance is on the classifier's pooled "
                   "features, not Inception-v3 (not comparable with FID tables)")
    return out


def write_card(out: Path, source: Path, record: dict[str, Any], judged: list[dict[str, Any]],
               quality: dict[str, Any], scorer, cfg) -> None:
    from ...core.files import read_jsonl

    rows = read_jsonl(source / "manifest.jsonl")
    card = {"kind": "augur synthetic dataset (curated)", "source": str(source), **render_part(record, rows),
            "curation": {"scorer": scorer.describe(), "thresholds": cfg.thresholds(), "counts": quality["counts"],
                         "scores": {k: _quantiles([s[k] for s in judged])
                                    for k in ("clip_score", "class_prob", "entropy")}},
            "measures": {"per_class": quality["per_class"], "real": quality.get("real")},
            "limits": limits_of(quality, scorer)}
    write_json(out / "dataset_card.json", card)
    write_text(out / "DATASET.md", markdown(card))


def markdown(card: dict[str, Any]) -> str:
    lines = ["# Dataset card", "", f"A synthetic image set made by Augur from `{card['source']}`.", ""]
    lines += made_markdown(card)
    cur = card.get("curation")
    if cur:
        c = cur["counts"]
        lines += ["## What was kept and why", "",
                  f"Scorer `{cur['scorer']['scorer']}` (sha256 `{cur['scorer']['scorer_sha256']}`). "
                  f"Kept **{c['kept']} of {c['rendered']}** images.", "",
                  "| threshold | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in cur["thresholds"].items()]
        lines += ["", "| rejection reason | images |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in c["reasons"].items()] or ["| (none) | 0 |"]
        lines += ["", "| class | rendered | kept |", "|---|---|---|"]
        lines += [f"| {k} | {v['rendered']} | {v['kept']} |" for k, v in c["per_class"].items()]
        lines += ["", "| score | n | min | p10 | median | p90 | max |", "|---|---|---|---|---|---|---|"]
        for k, q in cur["scores"].items():
            if q:
                lines.append(f"| {k} | {q['n']} | {q['min']} | {q['p10']} | {q['median']} | {q['p90']} | {q['max']} |")
        lines.append("")
    m = card.get("measures")
    if m:
        lines += ["## Set measures", "", "| class | Vendi (images) | Vendi (kept images) | Vendi (prompts) |",
                  "|---|---|---|---|"]
        lines += [f"| {k} | {v['vendi_images']:.2f} | {v['vendi_images_kept']:.2f} | {v['vendi_prompts']:.2f} |"
                  for k, v in m["per_class"].items()]
        real = m.get("real")
        if real:
            o = real["overall"]
            lines += ["", f"Against `{real['real']}` ({real['real_images']} images, features: {real['features']}): "
                          f"FD {o['fd']}, CMMD {o['cmmd']}; near-copies of real images: "
                          f"{real['near_copies_of_real']['total']} of {real['near_copies_of_real']['of_rendered']}."]
        lines.append("")
    lines += ["## Known limits", ""] + [f"- {x}" for x in card.get("limits") or ["none recorded"]] + [""]
    return "\n".join(lines)
