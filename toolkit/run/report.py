"""`augur report DIR`: a self-contained Markdown + HTML report of any Augur folder.

DIR may be a run folder (`augur run`), or any stage's output folder (extrapolate, render, pretrain,
dg, cl), or a folder holding several of them (a recipe's cl grid). The report opens with the results
(DG tables and bars, CL table, curves and accuracy matrices, the generated images, the extrapolated
classes or domains, the pretrained backbone), then the provenance (models with sha256, settings,
seeds, CPU threads, package versions); the recipe dump goes last. Images are inlined in the HTML, so
the one file opens anywhere.
"""

from __future__ import annotations

import base64
import html
import importlib.metadata
import json
import platform
import re
import shutil
from pathlib import Path
from typing import Any

from .. import __version__
from ..core.errors import AugurError
from ..core.files import read_json, read_jsonl, write_text
from ..core.outdir import MARKERS
from ..core.tables import format_table

DG_ROW_KEYS = {"label", "selection", "test_domain", "trial_seed", "hparams_seed", "val_acc", "test_acc", "dataset",
               "backbone", "weights"}
CL_ROW_KEYS = {"strategy", "weights", "backbone", "protocol", "incremental_accuracy", "average_incremental_accuracy",
               "last_accuracy", "average_forgetting", "class_order", "seed"}
SECTIONS = ("Domain generalization", "Continual learning", "Generated images", "Extrapolated prompts",
            "Pretrained backbone", "Provenance", "Recipe")
PACKAGES = ("torch", "diffusers", "transformers", "optimum-onnx", "onnxruntime", "peft", "timm", "accelerate",
            "llama-cpp-python")


def _versions() -> dict[str, str]:
    out = {"augur": __version__}
    for p in PACKAGES:
        try:
            out[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            out[p] = "not installed"
    return out


def stage_of(folder: Path) -> str | None:
    for stage, marker in MARKERS.items():
        if (folder / marker).is_file():
            return stage
    return None


def find_folders(root: Path) -> dict[str, list[Path]]:
    """Stage name -> the folders of that stage under `root` (a run folder's plan, or markers found)."""
    found: dict[str, list[Path]] = {}
    if stage_of(root) == "run" and (root / "plan.json").is_file():
        plan = read_json(root / "plan.json")
        for s in plan["plan"]:
            folder = Path(s["folder"])
            if s["stage"] == "report" or not folder.is_dir():
                continue
            for stage, folders in find_folders(folder).items():
                found.setdefault(stage, []).extend(folders)
        return found
    stage = stage_of(root)
    if stage == "render" or (root / "images" / "render.json").is_file():
        found.setdefault("render", []).append(root if stage == "render" else root / "images")
        return found
    if stage is not None:
        found.setdefault(stage, []).append(root)
        return found
    for sub in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        s = stage_of(sub)
        if s is not None and s != "run":
            found.setdefault(s, []).append(sub)
    return found


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display here, nor on most servers
    import matplotlib.pyplot as plt

    return plt


def _bars(rows: list[dict[str, Any]], path: Path) -> None:
    import numpy as np

    labels = list(dict.fromkeys(r["label"] for r in rows))
    domains = list(dict.fromkeys(r["test_domain"] for r in rows))
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(domains), 3))
    width = 0.8 / max(len(labels), 1)
    for k, a in enumerate(labels):
        means = [100 * float(np.mean([r["test_acc"] for r in rows if r["label"] == a and r["test_domain"] == d] or [0]))
                 for d in domains]
        ax.bar(np.arange(len(domains)) + k * width, means, width, label=a)
    ax.set_xticks(np.arange(len(domains)) + width * (len(labels) - 1) / 2, domains)
    _finish(fig, ax, "held-out domain", "test accuracy (%)", path, 7)


def _curves(results: list[dict[str, Any]], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 3))
    for r in results:
        inc = r["incremental_accuracy"]
        ax.plot(range(1, len(inc) + 1), [100 * v for v in inc], marker="o",
                label=f"{r['strategy']} ({r['weights']}, order {r['class_order']})")
    _finish(fig, ax, "after step", "accuracy on all seen classes (%)", path, 6)


def _finish(fig, ax, xlabel: str, ylabel: str, path: Path, legend_size: int) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 100)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)


def plan_status(root: Path) -> list[list[str]]:
    """For a run folder: [stage, status, folder] for every stage of its plan (done, incomplete: what is
    there, not started); [] for anything else."""
    if stage_of(root) != "run" or not (root / "plan.json").is_file():
        return []
    plan = read_json(root / "plan.json")
    rows = []
    for s in plan.get("plan", []):
        folder = Path(s["folder"])
        if s["stage"] == "report":
            state = "this report"
        elif (folder / "DONE.json").is_file():
            state = "done"
        elif folder.is_dir():
            state = f"incomplete: {stage_progress(s['stage'], folder, plan.get('stages', {}).get(s['stage'], {}))}"
        else:
            state = "not started"
        rows.append([s["stage"], state, folder.name])
    return rows


def stage_progress(stage: str, folder: Path, section: dict[str, Any]) -> str:
    """What an unfinished stage folder holds, in a few words."""
    try:
        if stage == "extrapolate":
            return "the LLM's requests are cached as they finish; prompts.jsonl not written yet"
        if stage == "render":
            images = folder / "images"
            done = sum(len(read_jsonl(m, tolerate_torn_tail=True)) for m in images.glob("manifest*.jsonl"))
            ident = read_json(images / "render.json")["identity"] if (images / "render.json").is_file() else {}
            prompts = read_json(images / "render.json").get("prompts") if (images / "render.json").is_file() else None
            total = (len(read_jsonl(Path(prompts))) * ident.get("images_per_prompt", 1)
                     if prompts and Path(prompts).is_file() else None)
            return f"{done} of {total} images" if total else f"{done} images"
        if stage == "pretrain":
            steps = [read_json(p / "progress.json")["step"] + 1 for p in (folder / "checkpoint").glob("step-*")
                     if (p / "progress.json").is_file()]
            return f"{max(steps)} steps trained, no backbone saved yet" if steps else "no epoch finished yet"
        if stage == "dg":
            runs = len(list(folder.glob("runs/*/records.json")))
            return f"{runs} run(s) finished, results.jsonl not complete"
        if stage == "cl":
            total = 1
            for key in ("strategies", "weights", "class_orders"):
                total *= len(section.get(key) or [1])
            done = sum(1 for f in folder.glob("*/results.jsonl")
                       if any(r.get("final") for r in read_jsonl(f, tolerate_torn_tail=True)))
            return f"{done} of {total} runs finished"
    except (AugurError, KeyError, TypeError, ValueError):
        pass
    return "started"


def write_report(root: Path, out: Path | None = None, title: str = "Augur run") -> dict[str, Any]:
    root = Path(root)
    if not root.is_dir():
        raise AugurError(f"{root}: no such folder")
    folders = find_folders(root)
    if not folders:
        raise AugurError(f"{root}: no Augur output here (a run folder, or a folder made by an augur stage)")
    out = Path(out or root / "report")
    if out.exists() and not out.is_dir():
        raise AugurError(f"--out {out} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    md: list[str] = [f"# {title}", "", f"Made from `{root}` by augur {__version__}.", ""]
    images: list[str] = []
    prov: list[list[Any]] = []
    status = plan_status(root)
    if status:
        # A run stopped half-way must not read as a complete one: every stage of the plan, and how far it got.
        md.extend(["## Stages of the plan", "", format_table(["stage", "status", "folder"], status, "markdown"), ""])

    def section(name: str) -> None:
        md.extend([f"## {name}", ""])

    def image(src: Path, name: str, alt: str) -> None:
        shutil.copyfile(src, out / name)
        images.append(name)
        md.extend([f"![{alt}]({name})", ""])

    # ---- results first
    read = [r for f in folders.get("dg", []) if (f / "results.jsonl").is_file()
            for r in read_jsonl(f / "results.jsonl", tolerate_torn_tail=True)]
    dg_rows = [r for r in read if DG_ROW_KEYS <= set(r)]  # a foreign results.jsonl is not read as DG results
    if read and not dg_rows:
        section(SECTIONS[0])
        md.extend([f"(results.jsonl holds {len(read)} row(s), none of them DG result rows: not DG result rows, "
                   "left out.)", ""])
    if dg_rows:
        from ..stages.dg.collect import tables

        section(SECTIONS[0])
        md.extend(["DomainBed's protocol; mean ± standard error over trials (DomainBed's collect_results format).",
                   "", tables(dg_rows, style="markdown"), ""])
        _bars([r for r in dg_rows if r["selection"] == dg_rows[0]["selection"]], out / "dg_bars.png")
        images.append("dg_bars.png")
        md.extend([f"![DG accuracy per held-out domain ({dg_rows[0]['selection']})](dg_bars.png)", ""])
        if len(dg_rows) < len(read):
            md.extend([f"({len(read) - len(dg_rows)} row(s) of results.jsonl are not DG result rows and were left out.)",
                       ""])
        for f in folders["dg"]:
            ident = read_json(f / "dg.json").get("identity") or {}
            prov.append(["dg", ident.get("algorithm"), ident.get("weights_sha256") or "random init",
                         ident.get("seed", ""), f"{ident.get('backbone')}, {ident.get('image_size')} px, "
                                                f"data {ident.get('data')}"])
    cl_results = [rows[-1] for f in folders.get("cl", []) if (f / "results.jsonl").is_file()
                  for rows in [read_jsonl(f / "results.jsonl", tolerate_torn_tail=True)] if rows]
    cl_results = [r for r in cl_results if r.get("final") and CL_ROW_KEYS <= set(r)]
    if cl_results:
        from ..stages.cl.stage import table as cl_table

        section(SECTIONS[1])
        md.extend(["Class-incremental, single head. Average incremental accuracy (mean over steps of the accuracy "
                   "on all classes seen so far), last accuracy, average forgetting (Chaudhry et al.), in %.", "",
                   cl_table(cl_results, "markdown"), ""])
        _curves(cl_results, out / "cl_curves.png")
        images.append("cl_curves.png")
        md.extend(["![accuracy on all seen classes after each step](cl_curves.png)", ""])
        for f in folders["cl"]:
            if (f / "accuracy_matrix.png").is_file():
                image(f / "accuracy_matrix.png", f"cl_matrix_{len(images)}.png", f"accuracy matrix {f.name}")
        for r in cl_results:
            prov.append(["cl", r["strategy"], r.get("weights_sha256") or "random init", r["seed"],
                         f"{r['backbone']}, {r['protocol']}, order {r['class_order']}"])
    for f in folders.get("render", []):
        ident = read_json(f / "render.json")["identity"]
        section(SECTIONS[2])
        if ident["model"] == "tiny-lcm" or "-tiny" in ident["model"]:
            md.append(f"**These images were drawn by `{ident['model']}`, a random-weight model: they are noise.** "
                      "Import a real diffusion model (`augur models import NAME PATH`) for real images.")
        else:
            md.append(f"These images were drawn by `{ident['model']}` (sha256 `{ident['model_sha256'][:16]}…`).")
        md.append("")
        if (f / "contact_sheet.png").is_file():
            image(f / "contact_sheet.png", f"contact_sheet_{len(images)}.png", "contact sheet")
        prov.append(["render", ident["model"], ident["model_sha256"], ident["seed"],
                     f"{ident['backend']}/{ident['device']}/{ident['dtype']}, {ident['scheduler']}, "
                     f"{ident['steps']} steps, {ident['size']} px"])
    for f in folders.get("extrapolate", []):
        if not (f / "prompts.jsonl").is_file():
            continue
        section(SECTIONS[3])
        rows = read_jsonl(f / "prompts.jsonl")
        run = read_json(f / "run.json")
        md.extend([f"{len(rows)} prompts. {run['summary']['line']}", ""])
        if (f / "classes.jsonl").is_file():
            md.append(format_table(["group", "class", "description"],
                                   [[c["group"], c["class"], c["description"]] for c in read_jsonl(f / "classes.jsonl")],
                                   "markdown"))
        else:
            md.append(format_table(["class", "domain", "prompt"], [[r["class"], r.get("domain_text", r["domain"]),
                                                                    r["prompt"]] for r in rows], "markdown"))
        md.append("")
        p = run["provenance"]
        prov.append(["extrapolate", p["model"], p["model_sha256"], p["seed"], ", ".join(p["templates"])])
        if p.get("semantic_dedup"):
            prov.append(["extrapolate (dedup)", p["semantic_dedup"]["model"], p["semantic_dedup"]["sha256"], "",
                         f"threshold {p['semantic_dedup']['threshold']}"])
    for f in folders.get("pretrain", []):
        if not (f / "card.json").is_file():
            continue
        section(SECTIONS[4])
        card = read_json(f / "card.json")
        md.extend([format_table(["backbone", "from", "LoRA", "images", "classes", "steps", "final loss", "seed"],
                                [[card["backbone"], card.get("init_weights", ""), card["lora"], card["images"],
                                  len(card["classes"]), card["steps"], f"{card['history'][-1]['loss']:.3f}",
                                  card["seed"]]], "markdown"), ""])
        prov.append(["pretrain", card["backbone"], card["files"]["backbone.safetensors"], card["seed"],
                     f"{card['images']} images, {card['steps']} steps"])
    # ---- provenance
    section(SECTIONS[5])
    md.extend([format_table(["stage", "model", "sha256", "seed", "settings"], prov, "markdown"), "",
               f"Machine: {platform.machine()} {platform.processor() or ''}, Python {platform.python_version()}.", "",
               format_table(["package", "version"], [[k, v] for k, v in _versions().items()], "markdown"), ""])
    # ---- the recipe last
    if (root / "plan.json").is_file():
        section(SECTIONS[6])
        plan = read_json(root / "plan.json")
        md.extend([f"Recipe `{plan['recipe']}` (name {plan['name']}), seed {plan['seed']}"
                   f"{' (smoke run: tiny stand-ins and cut-down data)' if plan.get('smoke') else ''}.", "",
                   "```", json.dumps(plan["stages"], indent=2), "```", ""])
    text = "\n".join(md)
    write_text(out / "report.md", text)
    write_text(out / "report.html", _html(text, out, title))
    return {"markdown": out / "report.md", "html": out / "report.html", "images": [out / i for i in images]}


def _html(md: str, folder: Path, title: str) -> str:
    """A small Markdown subset to HTML, images inlined as data URIs: one file that opens anywhere."""
    out, lines, i = [], md.split("\n"), 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            out.append("<pre>" + html.escape("\n".join(lines[i + 1: j])) + "</pre>")
            i = j + 1
            continue
        if line.startswith("| "):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                if not lines[i].startswith("|---"):
                    rows.append([c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", lines[i].strip("|"))])
                i += 1
            head, body = rows[0], rows[1:]
            out.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
                       + "</table>")
            continue
        m = re.match(r"!\[(.*)\]\((.*)\)", line)
        if m:
            data = base64.b64encode((folder / m.group(2)).read_bytes()).decode()
            out.append(f'<img alt="{html.escape(m.group(1))}" src="data:image/png;base64,{data}">')
        elif line.startswith("## "):
            out.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("# "):
            out.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.strip():
            t = html.escape(line)
            t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
            t = re.sub(r"`(.+?)`", r"<code>\1</code>", t)
            out.append(f"<p>{t}</p>")
        i += 1
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}table{border-collapse:collapse;"
             "margin-bottom:1em}td,th{border:1px solid #ccc;padding:2px 6px;font-size:90%}pre{background:#f4f4f4;"
             "padding:8px;overflow-x:auto}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n")
