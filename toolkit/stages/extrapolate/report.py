"""The extrapolate stage in a report: the prompts (or the realm's classes) and the models that made them."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def write_section(folders: list[Path], page: Any) -> None:
    from ...core.files import read_json, read_jsonl

    for f in folders:
        if not (f / "prompts.jsonl").is_file():
            continue
        page.section("Extrapolated prompts")
        rows = read_jsonl(f / "prompts.jsonl")
        run = read_json(f / "run.json")
        page.text(f"{len(rows)} prompts. {run['summary']['line']}")
        if (f / "classes.jsonl").is_file():
            page.table(["group", "class", "description"],
                       [[c["group"], c["class"], c["description"]] for c in read_jsonl(f / "classes.jsonl")])
        else:
            page.table(["class", "domain", "prompt"],
                       [[r["class"], r.get("domain_text", r["domain"]), r["prompt"]] for r in rows])
        p = run["provenance"]
        page.provenance("extrapolate", p["model"], p["model_sha256"], p["seed"], ", ".join(p["templates"]))
        if p.get("semantic_dedup"):
            page.provenance("extrapolate (dedup)", p["semantic_dedup"]["model"], p["semantic_dedup"]["sha256"], "",
                            f"threshold {p['semantic_dedup']['threshold']}")
