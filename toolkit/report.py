"""`augur report RUN_DIR`: a self-contained Markdown + HTML report of a recipe run.

Sections: recipe and provenance (models with sha256, seeds, versions), the extrapolated
domains/classes, the contact sheet of generated images (saying plainly which model drew them), the
DG table with per-domain bars, the CL accuracy-matrix heat-maps and accuracy curves.
"""

from __future__ import annotations

import base64
import html
import importlib.metadata
import json
import re
import shutil
from pathlib import Path
from typing import Any

from . import __version__
from .errors import AugurError
from .fileio import read_json, read_jsonl, write_text

SECTIONS = ("Recipe and provenance", "Extrapolated prompts", "Generated images", "Pretrained backbone",
            "Domain generalization", "Continual learning")
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


def _md_table(header: list[str], rows: list[list[Any]]) -> str:
    esc = lambda v: str(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows])


def _fixed(text: str) -> str:
    return "```\n" + text + "\n```"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display here, nor on most servers
    import matplotlib.pyplot as plt

    return plt


def _finish(fig, ax, xlabel: str, ylabel: str, path: Path, legend_size: int) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 100)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    fig.clf()
    _pyplot().close(fig)


def _bars(rows: list[dict[str, Any]], path: Path) -> None:
    import numpy as np

    algos = sorted({r["algorithm"] for r in rows})
    domains = sorted({r["test_domain"] for r in rows}, key=lambda d: (len(d), d))
    fig, ax = _pyplot().subplots(figsize=(1.2 + 0.9 * len(domains), 3))
    width = 0.8 / len(algos)
    for k, a in enumerate(algos):
        means = [100 * np.mean([r["test_acc"] for r in rows if r["algorithm"] == a and r["test_domain"] == d] or [0])
                 for d in domains]
        ax.bar(np.arange(len(domains)) + k * width, means, width, label=a)
    ax.set_xticks(np.arange(len(domains)) + width * (len(algos) - 1) / 2, domains)
    _finish(fig, ax, "held-out domain", "test accuracy (%)", path, 7)


def _curves(results: list[dict[str, Any]], path: Path) -> None:
    import numpy as np

    fig, ax = _pyplot().subplots(figsize=(4.5, 3))
    for r in results:
        A = r["accuracy_matrix"]
        ax.plot(range(1, len(A) + 1), [100 * np.mean(row[: t + 1]) for t, row in enumerate(A)], marker="o",
                label=f"{r['strategy']} ({'pretrained' if r['weights'] != 'none' else 'random'})")
    _finish(fig, ax, "after task", "accuracy on seen tasks (%)", path, 6)


def write_report(run_dir: Path, out: Path | None = None, title: str = "Augur run") -> dict[str, Path]:
    from .recipe import stage_folders

    run_dir = Path(run_dir)
    if not (run_dir / "recipe.json").exists():
        raise AugurError(f"{run_dir}: not a run folder (no recipe.json; make one with `augur run RECIPE`)")
    out = Path(out or run_dir / "report")
    out.mkdir(parents=True, exist_ok=True)
    recipe = read_json(run_dir / "recipe.json")
    folders = stage_folders(run_dir)
    md: list[str] = [f"# {title}", ""]
    images: list[str] = []

    def section(name: str) -> None:
        md.extend([f"## {name}", ""])

    def image(src: Path, name: str, alt: str) -> None:
        shutil.copyfile(src, out / name)
        images.append(name)
        md.extend([f"![{alt}]({name})", ""])

    section(SECTIONS[0])
    md.append(f"Recipe `{recipe['recipe']}` (name {recipe['name']}), seed {recipe['seed']}, run folder `{run_dir}`.")
    md.append("")
    md.append(_fixed(json.dumps(recipe["stages"], indent=2)))
    md.append("")
    prov_rows = []
    ex = folders.get("extrapolate")
    if ex and (ex / "run.json").exists():
        p = read_json(ex / "run.json")["provenance"]
        prov_rows.append(["extrapolate", p["model"], p["model_sha256"], p["seed"], ", ".join(p["templates"])])
        if p.get("semantic_dedup"):
            prov_rows.append(["extrapolate (dedup)", p["semantic_dedup"]["model"], p["semantic_dedup"]["sha256"],
                              "", f"threshold {p['semantic_dedup']['threshold']}"])
    rd = folders.get("render")
    ident = None
    if rd and (rd / "images" / "render.json").exists():
        ident = read_json(rd / "images" / "render.json")["identity"]
        prov_rows.append(["render", ident["model"], ident["model_sha256"], ident["seed"],
                          f"{ident['backend']}/{ident['device']}/{ident['dtype']}, {ident['scheduler']}, "
                          f"{ident['steps']} steps, {ident['size']}px"])
    md.append(_md_table(["stage", "model", "sha256", "seed", "settings"], prov_rows))
    md.append("")
    md.append(_md_table(["package", "version"], [[k, v] for k, v in _versions().items()]))
    md.append("")

    section(SECTIONS[1])
    if ex and (ex / "prompts.jsonl").exists():
        rows = read_jsonl(ex / "prompts.jsonl")
        run = read_json(ex / "run.json")
        md.append(f"{len(rows)} prompts. {run['summary']['line']}")
        md.append("")
        if (ex / "classes.jsonl").exists():
            md.append(_md_table(["group", "class", "description"],
                                [[c["group"], c["class"], c["description"]] for c in read_jsonl(ex / "classes.jsonl")]))
        else:
            md.append(_md_table(["class", "domain", "prompt"], [[r["class"], r["domain_text"], r["prompt"]] for r in rows]))
        md.append("")
    else:
        md.extend(["(no extrapolation stage in this run)", ""])

    section(SECTIONS[2])
    if ident is not None:
        drawn_by = ident["model"]
        if drawn_by == "tiny-lcm":
            md.append("**These images were drawn by `tiny-lcm`, the built-in random-init model: they are noise.** "
                      "Import a real diffusion model (`augur models import NAME PATH`) and the quickstart uses it.")
        else:
            md.append(f"These images were drawn by `{drawn_by}` (sha256 `{ident['model_sha256'][:16]}…`).")
        md.append("")
        image(rd / "images" / "contact_sheet.png", "contact_sheet.png", "contact sheet")
    else:
        md.extend(["(no render stage in this run)", ""])

    section(SECTIONS[3])
    pt = folders.get("pretrain")
    if pt and (pt / "card.json").exists():
        card = read_json(pt / "card.json")
        md.append(_md_table(["backbone", "LoRA", "images", "classes", "steps", "final loss", "seed"],
                            [[card["backbone"], card["lora"], card["images"], len(card["classes"]), card["steps"],
                              f"{card['history'][-1]['loss']:.3f}", card["seed"]]]))
        md.append("")
    else:
        md.extend(["(no pretraining stage in this run)", ""])

    section(SECTIONS[4])
    dg = folders.get("dg")
    if dg and (dg / "results.jsonl").exists():
        from .dg import table

        rows = read_jsonl(dg / "results.jsonl")
        md.extend(["Leave-one-domain-out accuracy (%), model selection by training-domain validation:", "",
                   _fixed(table(rows)), ""])
        _bars(rows, out / "dg_bars.png")
        images.append("dg_bars.png")
        md.extend(["![DG accuracy per held-out domain](dg_bars.png)", ""])
    else:
        md.extend(["(no DG stage in this run)", ""])

    section(SECTIONS[5])
    cl = folders.get("cl")
    results = [read_jsonl(p)[0] for p in sorted(cl.glob("*/results.jsonl"))] if cl else []
    if results:
        from .cl import table as cl_table

        md.extend([_fixed(cl_table(results)), ""])
        _curves(results, out / "cl_curves.png")
        images.append("cl_curves.png")
        md.extend(["![accuracy on seen tasks after each task](cl_curves.png)", ""])
        for p in sorted(cl.glob("*/accuracy_matrix.png")):
            image(p, f"cl_matrix_{p.parent.name}.png", f"accuracy matrix {p.parent.name}")
    else:
        md.extend(["(no CL stage in this run)", ""])

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
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 6px;font-size:90%}pre{background:#f4f4f4;padding:8px;"
             "overflow-x:auto}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n")
