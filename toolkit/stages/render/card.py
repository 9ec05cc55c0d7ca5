"""The render part of a synthetic set's dataset card: OUT/DATASET.md and OUT/dataset_card.json.

Every synthetic set Augur makes carries a card (the datasheet a paper's appendix needs): what made the
images (the LLM and the generator, with sha256 and licence), how (prompt templates, seeds, render
settings), and what they are (classes, domains, counts). `augur render` writes this part; `augur curate`
(stages/curate/card.py) adds what was kept and why, and the set measures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...core.files import read_json, write_json, write_text

GENERATOR_KEYS = ("backend", "device", "dtype", "scheduler", "steps", "guidance", "size", "seed", "images_per_prompt")


def license_of(name: str | None) -> str:
    from ... import models

    card = models.load_cards().get(name or "")
    return card.license if card is not None else "unknown (not a card)"


def llm_part(record: dict[str, Any]) -> dict[str, Any]:
    """The LLM that wrote the prompts, from the extrapolate record beside the prompts file (if it is there)."""
    prompts = record.get("prompts")
    run = Path(prompts).parent / "run.json" if isinstance(prompts, str) else None
    if run is None or not run.is_file():
        return {"known": False, "why": "the prompts' extrapolate record (run.json) is not beside prompts.jsonl"}
    try:
        p = read_json(run).get("provenance") or {}
    except Exception:  # noqa: BLE001 - a card states what it could not read, it does not fail the stage
        return {"known": False, "why": f"{run} could not be read"}
    if not isinstance(p, dict):
        return {"known": False, "why": f"{run} has no provenance"}
    return {"known": True, "model": p.get("model"), "model_sha256": p.get("model_sha256"),
            "license": license_of(p.get("model")), "templates": p.get("templates"), "seed": p.get("seed"),
            "sampling": p.get("sampling"), "mode": p.get("mode")}


def render_part(record: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    ident = record.get("identity") or {}
    per: dict[str, dict[str, int]] = {}
    for r in rows:
        per.setdefault(r["class"], {}).setdefault(r["domain"], 0)
        per[r["class"]][r["domain"]] += 1
    return {"generator": {"model": ident.get("model"), "model_sha256": ident.get("model_sha256"),
                          "license": license_of(ident.get("model")),
                          **{k: ident.get(k) for k in GENERATOR_KEYS if k in ident}},
            "llm": llm_part(record),
            "classes": sorted({r["class"] for r in rows}), "domains": sorted({r["domain"] for r in rows}),
            "images": len(rows),
            "images_per_class_domain": {c: dict(sorted(d.items())) for c, d in sorted(per.items())},
            "prompts_file": record.get("prompts"), "prompts_sha256": ident.get("prompts_sha256"),
            **({"guides": guides_part(record, rows)} if isinstance(ident.get("init_images"), dict) else {})}


def guides_part(record: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Guided rendering: which real images the set started from (each row names its own guide)."""
    ident = record["identity"]
    used: dict[str, set] = {}
    for r in rows:
        guide = r.get("init_image") or {}
        used.setdefault(guide.get("domain"), set()).add(guide.get("path"))
    return {"data": record.get("init_images"), "data_sha256": ident["init_images"].get("sha256"),
            "domains": ident["init_images"].get("domains"), "strengths": ident.get("strengths"),
            "guide_images_used": {str(d): len(p) for d, p in sorted(used.items(), key=lambda kv: str(kv[0]))}}


def made_markdown(card: dict[str, Any]) -> list[str]:
    """The card's "How it was made" section (shared by render and curate cards)."""
    g, llm = card["generator"], card["llm"]
    lines = ["## How it was made", ""]
    if llm.get("known"):
        lines.append(f"- **LLM**: `{llm['model']}` (sha256 `{llm['model_sha256']}`, licence {llm['license']}), "
                     f"{llm['mode']} mode, templates {', '.join(llm['templates'] or [])}, seed {llm['seed']}, "
                     f"sampling {llm['sampling']}")
    else:
        lines.append(f"- **LLM**: not known ({llm['why']})")
    lines.append(f"- **Prompts**: `{card.get('prompts_file')}` (sha256 `{card.get('prompts_sha256')}`)")
    lines.append(f"- **Generator**: `{g['model']}` (sha256 `{g['model_sha256']}`, licence {g['license']}), "
                 + ", ".join(f"{k} {g[k]}" for k in GENERATOR_KEYS if k in g))
    if card.get("guides"):
        gd = card["guides"]
        strengths = ", ".join(f"{x:g}" for x in gd["strengths"])
        used = ", ".join(f"{d} {n}" for d, n in gd["guide_images_used"].items())
        lines.append(f"- **Guided by real images** (image-to-image): `{gd['data']}` (digest `{gd['data_sha256']}`), "
                     f"domains {', '.join(gd['domains'] or [])}, strengths {strengths}; guide images used per domain: "
                     f"{used} (each image's guide: `init_image` in manifest.jsonl)")
    lines += [f"- **Classes** ({len(card['classes'])}): {', '.join(card['classes'])}",
              f"- **Domains** ({len(card['domains'])}): {', '.join(card['domains'])}",
              f"- **Images**: {card['images']}", ""]
    return lines


RENDER_LIMITS = ["not curated: every rendered image is in this folder; none was scored, filtered or de-duplicated "
                 "(`augur curate` judges them and writes a card with what it kept and why)"]


def write_render_card(out: Path, record: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    # The card names no path of its own folder: it travels with the folder, and a resumed render writes the
    # same bytes as an uninterrupted one wherever it runs.
    card = {"kind": "augur synthetic dataset (rendered)", **render_part(record, rows), "limits": list(RENDER_LIMITS)}
    write_json(out / "dataset_card.json", card)
    lines = ["# Dataset card", "", "A synthetic image set rendered by Augur (`augur render`).", ""]
    lines += made_markdown(card)
    domains = card["domains"]
    lines += ["## Images per class and domain", "", "| class | " + " | ".join(domains) + " |",
              "|---|" + "---|" * len(domains)]
    lines += [f"| {c} | " + " | ".join(str(d.get(x, 0)) for x in domains) + " |"
              for c, d in card["images_per_class_domain"].items()]
    lines += ["", "## Known limits", ""] + [f"- {x}" for x in card["limits"]] + [""]
    write_text(out / "DATASET.md", "\n".join(lines))
