"""The report's table of rendered domains: which LLM-proposed domains a DG sweep trained on, and what each
carried.

For every synthetic folder the DG rows name: per rendered domain, its images (the rows of the
folder's manifest, as dg reads it), its curate scores when the folder is a curate output (images kept of rendered,
mean CLIPScore, share whose zero-shot top-1 is their class, mean entropy, over the kept images), and,
for sweeps with `--synthetic-envs per-domain` (each rendered domain an environment of its own), its
validation accuracy: the accuracy on the domain's out-split at the checkpoint training-domain
validation selects, mean over the sweep's runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _curate_scores(folder: Path) -> dict[str, dict[str, Any]] | None:
    from ...core.files import read_jsonl

    f = folder / "scores.jsonl"
    if not (folder / "curate.json").is_file() or not f.is_file():
        return None
    by: dict[str, dict[str, Any]] = {}
    for r in read_jsonl(f, tolerate_torn_tail=True):
        if not isinstance(r, dict) or not isinstance(r.get("domain"), str):
            continue
        d = by.setdefault(r["domain"], {"rendered": 0, "kept": []})
        d["rendered"] += 1
        if not r.get("reasons"):
            d["kept"].append(r)
    return by


def _mean(rows: list[dict[str, Any]], key: str, scale: float = 1.0) -> str:
    v = [float(r[key]) for r in rows if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
    if key == "class_agreement":
        v = [float(r[key]) for r in rows if isinstance(r.get(key), bool)]
    return f"{scale * np.mean(v):.1f}" if v else "–"


def _validation(sweeps: list[Path]) -> dict[str, list[float]]:
    """rendered domain -> its out-split accuracy at the training-domain-selected step, one per run."""
    from ...core.files import read_json
    from . import selection as sel

    out: dict[str, list[float]] = {}
    for folder in sweeps:
        for f in sorted(folder.glob("runs/*/records.json")):
            res = read_json(f)
            records, train = res.get("records") or [], res.get("train_envs") or []
            if not records or not isinstance(records, list):
                continue
            test = (res.get("spec") or {}).get("test_envs") or []
            picked = sel.training_domain(records, train, test[0]) if test else None
            if picked is None:
                continue
            rec = next(r for r in records if r["step"] == picked["selected_step"])
            for env in train:
                if env.startswith("synthetic/") and rec["acc"][env]["out"][1]:
                    out.setdefault(env.split("/", 1)[1], []).append(sel.acc(rec, env, "out"))
    return out


def _identity(folder: Path) -> dict[str, Any]:
    from ...core.files import read_json

    f = folder / "dg.json"
    ident = read_json(f).get("identity") if f.is_file() else None
    return ident if isinstance(ident, dict) else {}


def _counts(folder: Path) -> dict[str, int]:
    """rendered domain -> its images: the manifest's rows (render and curate outputs), else the folder as read."""
    from ...core.files import read_jsonl
    from ...learn import data

    if (folder / "manifest.jsonl").is_file():
        out: dict[str, int] = {}
        for r in read_jsonl(folder / "manifest.jsonl", tolerate_torn_tail=True):
            if isinstance(r, dict) and isinstance(r.get("domain"), str):
                out[r["domain"]] = out.get(r["domain"], 0) + 1
        return out
    return {d.name: len(d.images) for d in data.load(str(folder)).domains}


def rendered_domains(rows: list[dict[str, Any]], folders: list[Path], page: Any) -> None:
    synthetic = list(dict.fromkeys(r["synthetic"] for r in rows if isinstance(r.get("synthetic"), str)))
    for s in synthetic:
        folder = Path(s)
        if not folder.is_dir():
            page.text(f"(rendered domains of `{s}`: the folder is not here; its table is left out)")
            continue
        counts = _counts(folder)
        scores = _curate_scores(folder)
        per_domain = [f for f in folders if _identity(f).get("synthetic") == s
                      and _identity(f).get("synthetic_envs") == "per-domain"]
        val = _validation(per_domain) if per_domain else {}
        header = ["rendered domain", "images"]
        if scores is not None:
            header += ["kept of rendered", "CLIPScore", "class agreement (%)", "entropy"]
        if val:
            header += ["validation acc (%)", "runs"]
        body = []
        for name, n in counts.items():
            line: list[Any] = [name, n]
            if scores is not None:
                sd = scores.get(name, {"rendered": 0, "kept": []})
                line += [f"{len(sd['kept'])} of {sd['rendered']}", _mean(sd["kept"], "clip_score"),
                         _mean(sd["kept"], "class_agreement", 100), _mean(sd["kept"], "entropy")]
            if val:
                v = val.get(name, [])
                line += [f"{100 * np.mean(v):.1f}" if v else "–", len(v)]
            body.append(line)
        page.text(f"Rendered domains of `{folder.name}`" + (" (a curate output: scores of the kept images)"
                                                             if scores is not None else "")
                  + (": validation accuracy at the checkpoint training-domain validation selects, mean over runs"
                     if val else "") + ".")
        page.table(header, body)
