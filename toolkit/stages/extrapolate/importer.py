"""`augur extrapolate import FILE.csv`: the prompt CSVs published with Premonition, as stage-1 output.

The paper's repository ships, per realm, a CSV of predicted classes with their Stable Diffusion prompts,
in one of two layouts:
    subtype, species_latin_name, species_common_name, species_description, SD_prompt   (biological realms)
    subtype, item_name, item_description, SD_prompt                                   (other realms)
Each row becomes a class (its group is `subtype`) in classes.jsonl and a prompt row, with the paper's
prompt verbatim, in prompts.jsonl: the same files `extrapolate realm` writes, so `render` and the rest
of the pipeline replicate the paper's exact class set with a local generator. Provenance records the
file's sha256 and each row's line.

Class keys. A biological row is its species: the Latin name, with the common name, labelled as the
paper's own prompt names it, "Common Name (Latin name)", or the Latin name alone where the CSV has no
common name (45 rows of Plants). Neither name alone is a key in the published files: Birds has two
"Darwin's Rhea" rows (Rhea pennata pennata, Rhea pennata garleppi), and 14 of its rows (54 of Plants')
repeat a Latin name under another common name (Oilbird / Guácharo). The paper's notebook writes each
row's images into a folder named by the Latin name alone, where such rows' files overwrite each
other's, while its Table 1 counts 620 and 1010 classes: the pair of names keeps every row, as the
table does (Birds 620, Food 310, Plants 1010; tests/data/premonition). Other layouts key by item_name.
"""

from __future__ import annotations

import csv
import io
import sys
import time
from pathlib import Path
from typing import Any

from ... import __version__
from ...core.stagerun import StageResult, StageRun
from ...core.errors import AugurError
from ...core.files import sha256_file, write_json, write_jsonl
from ...core.names import check_label
from .stage import FORCE_HINT, class_slugs, stage_result

LAYOUTS = {
    "biological": ("subtype", "species_latin_name", "species_common_name", "species_description", "SD_prompt"),
    "items": ("subtype", "item_name", "item_description", "SD_prompt"),
}
OPTIONAL = {"species_common_name"}  # 45 of the paper's Plants rows have none: the Latin name names them


def class_label(layout: str, row: dict[str, str]) -> str:
    if layout != "biological":
        return row["item_name"]
    common, latin = row["species_common_name"], row["species_latin_name"]
    return f"{common} ({latin})" if common else latin


def class_phrase(layout: str, row: dict[str, str]) -> str:
    """What the class is called in words (curate's zero-shot text): the common name where there is one."""
    if layout != "biological":
        return row["item_name"]
    return row["species_common_name"] or row["species_latin_name"]


def read_rows(path: Path) -> tuple[str, list[tuple[int, dict[str, str]]], list[str]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise AugurError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise AugurError(f"{path}: cannot read it as UTF-8 text ({e.__class__.__name__})") from None
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    layout = next((name for name, cols in LAYOUTS.items() if set(cols) <= set(header)), None)
    if layout is None:
        raise AugurError(f"{path}: columns {', '.join(header) or 'none'}; expected "
                         + " or ".join(", ".join(cols) for cols in LAYOUTS.values()))
    ignored = [h for h in header if h and h not in LAYOUTS[layout]]
    rows = []
    try:
        for lineno, row in enumerate(reader, start=2):
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items() if k is not None}
            if not any(row.values()):
                continue
            missing = [c for c in LAYOUTS[layout] if not row.get(c) and c not in OPTIONAL]
            if missing:
                raise AugurError(f"{path}:{lineno}: empty {', '.join(missing)}")
            rows.append((lineno, row))
    except csv.Error as e:
        raise AugurError(f"{path}: not valid CSV ({e})") from None
    if not rows:
        raise AugurError(f"{path}: no class rows")
    return layout, rows, ignored


def import_csv(path: Path, out: Path, realm: str | None = None, force: bool = False) -> StageResult:
    """The paper's prompt CSV -> OUT/classes.jsonl, prompts.jsonl; the StageResult's data is run.json."""
    return stage_result(_import(Path(path), Path(out), realm, force))


def _import(path: Path, out: Path, realm: str | None, force: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    path, out = Path(path), Path(out)
    layout, rows, ignored = read_rows(path)
    desc_col = "species_description" if layout == "biological" else "item_description"
    realm = (realm or path.stem).strip()
    check_label(realm, "realm")
    for lineno, row in rows:
        check_label(row["subtype"], f"{path}:{lineno}: subtype")
        check_label(class_label(layout, row), f"{path}:{lineno}: class name")
    digest = sha256_file(path)
    with StageRun(out, "extrapolate", {"import": str(path.resolve()), "sha256": digest, "realm": realm}, force=force,
                  hint=FORCE_HINT) as run:
        classes: dict[str, dict[str, Any]] = {}
        slugs = class_slugs(list(dict.fromkeys(class_label(layout, row) for _, row in rows)))
        prompt_rows, counts, used = [], {}, set()
        groups_of: dict[str, list[str]] = {}
        for lineno, row in rows:
            name = class_label(layout, row)
            prov = {"source": "premonition-csv", "file": path.name, "sha256": digest, "line": lineno,
                    "toolkit_version": __version__}
            if name not in classes:
                classes[name] = {"class": name, "group": row["subtype"], "realm": realm, "description": row[desc_col],
                                 "provenance": prov}
                if layout == "biological":
                    classes[name]["latin_name"] = row["species_latin_name"]
                    classes[name]["common_name"] = row["species_common_name"] or None
            if row["subtype"] not in groups_of.setdefault(name, []):
                groups_of[name].append(row["subtype"])
            k = counts[name] = counts.get(name, 0) + 1
            # ids are unique in the file: "x" twice and a class "x-2" must not both make "x-2"
            row_id, extra = slugs[name] + (f"-{k}" if k > 1 else ""), 1
            while row_id in used:
                extra += 1
                row_id = f"{slugs[name]}-{k}-{extra}"
            used.add(row_id)
            prompt_rows.append({"id": row_id, "class": name, "class_phrase": class_phrase(layout, row),
                                "domain": "photo", "group": row["subtype"], "prompt": row["SD_prompt"],
                                "provenance": prov})
        merged = {name: groups for name, groups in groups_of.items() if len(groups) > 1}
        for name, groups in merged.items():  # one class, one label: the first subtype names its group
            print(f"warning: {path.name}: class '{name}' appears under {len(groups)} subtypes "
                  f"({', '.join(groups)}); it is one class, in group '{groups[0]}'", file=sys.stderr)
        if ignored:
            print(f"warning: {path.name}: column(s) {', '.join(ignored)} are not part of the {layout} layout and "
                  "were not imported", file=sys.stderr)
        wall = time.perf_counter() - t0
        groups = sorted({c["group"] for c in classes.values()})
        line = (f"extrapolate import: {len(classes)} classes in {len(groups)} groups, {len(prompt_rows)} prompts "
                f"from {path.name} ({layout} layout); {wall:.1f} s → {out / 'prompts.jsonl'}")
        record = {"provenance": {"stage": "extrapolate", "mode": "import", "file": str(path.resolve()), "sha256": digest,
                              "layout": layout, "realm": realm, "ignored_columns": ignored,
                              "merged_classes": merged, "class_key": ("common name (Latin name)"
                                                                      if layout == "biological" else "item_name"),
                              "model": "Premonition paper (imported)",
                              "model_sha256": digest, "seed": None, "templates": ["premonition-csv"],
                              "toolkit_version": __version__},
               "per_group": [{"group": g, "status": "ok", "kept": sum(c["group"] == g for c in classes.values()),
                              "wanted": sum(c["group"] == g for c in classes.values()), "attempts": 0, "rejected": {}}
                             for g in groups],
               "summary": {"line": line, "prompts": len(prompt_rows), "classes": len(classes)}}
        write_json(out / "run.json", record)
        write_jsonl(out / "classes.jsonl", list(classes.values()))
        write_jsonl(out / "prompts.jsonl", prompt_rows)  # last: its presence means the import finished
        run.finish()
        return record
