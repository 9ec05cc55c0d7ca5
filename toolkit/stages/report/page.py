"""`augur report DIR`: a self-contained Markdown + HTML report of any Augur folder.

DIR may be a run folder (`augur run`), or any stage's output folder (extrapolate, render, pretrain,
dg, cl), or a folder holding several of them (a recipe's cl grid). A run folder's report opens with
every stage of its plan and how far it got; then, when its runs hold several arms (with and without
synthetic data; several weights), what the arm changed, paired (`Stage.evidence`); then the results, each
stage writing its own section
(`Stage.report`, results first: DG tables and bars, CL table, curves and accuracy matrices, the
generated images, the extrapolated classes or domains, the pretrained backbone), then the provenance
(models with sha256, settings, seeds, CPU threads, package versions); the recipe dump goes last.
Images are inlined in the HTML, so the one file opens anywhere.
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

from ... import __version__
from ...core.errors import AugurError
from ...core.files import read_json, write_text
from ...core.outdir import stage_in
from ...core.tables import format_table
from ..descriptor import RECIPE, get, stages
from .config import NAME

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


class Page:
    """The report being written: Markdown lines, the images copied beside it, the provenance rows."""

    def __init__(self, out: Path):
        self.out = out
        self.md: list[str] = []
        self.images: list[str] = []
        self.prov: list[list[Any]] = []

    def section(self, name: str) -> None:
        self.md.extend([f"## {name}", ""])

    def text(self, line: str) -> None:
        self.md.extend([line, ""])

    def markdown(self, block: str) -> None:
        self.md.extend([block, ""])

    def table(self, header: list[str], rows: list[list[Any]]) -> None:
        self.markdown(format_table(header, rows, "markdown"))

    def path(self, name: str) -> Path:
        """Where a stage draws a figure of the report (then `figure(name, ...)`)."""
        return self.out / name

    def figure(self, name: str, alt: str) -> None:
        self.images.append(name)
        self.md.extend([f"![{alt}]({name})", ""])

    def image(self, src: Path, alt: str, prefix: str | None = None) -> None:
        """A copy of an image a stage made, numbered so two stages' files never collide."""
        name = f"{prefix or src.stem}_{len(self.images)}.png"
        shutil.copyfile(src, self.out / name)
        self.figure(name, alt)

    def provenance(self, stage: str, model: Any, sha256: Any, seed: Any, settings: str) -> None:
        self.prov.append([stage, model, sha256, seed, settings])


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display here, nor on most servers
    import matplotlib.pyplot as plt

    return plt


def finish_plot(fig, ax, xlabel: str, ylabel: str, path: Path, legend_size: int) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 100)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    pyplot().close(fig)


def plan_of(root: Path) -> dict[str, Any] | None:
    """The plan of a recipe run's folder (`augur run`), checked; None for any other folder."""
    if stage_in(root) != RECIPE or not (root / "plan.json").is_file():
        return None
    f = root / "plan.json"
    plan = read_json(f)
    if not isinstance(plan, dict):
        raise AugurError(f"{f}: not a run plan (a JSON object with a 'plan' list, as `augur run` writes it)")
    steps = plan.get("plan")
    if not isinstance(steps, list) or not all(isinstance(s, dict) and isinstance(s.get("stage"), str)
                                              and isinstance(s.get("folder"), str) for s in steps):
        raise AugurError(f"{f}: its 'plan' is not a list of {{stage, folder}} entries")
    for key, kind in (("stages", dict), ("recipe", str), ("name", str), ("seed", int)):
        if key not in plan:
            raise AugurError(f"{f}: no '{key}' (a run plan names its recipe, name, seed and stages, as `augur run` "
                             "writes it)")
        if not isinstance(plan[key], kind) or isinstance(plan[key], bool):
            raise AugurError(f"{f}: '{key}' is a {type(plan[key]).__name__}, not a {kind.__name__}")
    return plan


def find_folders(root: Path, _seen: frozenset = frozenset()) -> dict[str, list[Path]]:
    """Stage name -> the folders of that stage under `root` (a run folder's plan, or records found)."""
    found: dict[str, list[Path]] = {}
    plan = plan_of(root)
    if plan is not None:
        seen = _seen | {root.resolve()}
        for s in plan["plan"]:
            folder = Path(s["folder"])
            if not folder.is_dir():
                continue
            if folder.resolve() in seen:
                raise AugurError(f"{root / 'plan.json'}: its plan leads back to {folder} (a loop of run folders)")
            for stage, folders in find_folders(folder, seen).items():
                found.setdefault(stage, []).extend(folders)
        return found
    for st in stages():
        folders = st.folders(root)
        if folders:
            found[st.name] = folders
    return found


def plan_status(root: Path) -> list[list[str]]:
    """For a run folder: [stage, status, folder] for every stage of its plan (done, incomplete: what is
    there, not started); [] for anything else."""
    plan = plan_of(root)
    if plan is None:
        return []
    rows = []
    for s in plan.get("plan", []):
        folder = Path(s["folder"])
        if s["stage"] == NAME:  # the page being written
            state = "this report"
        elif (folder / "DONE.json").is_file():
            state = "done"
        elif folder.is_dir():
            state = f"incomplete: {stage_unfinished(s['stage'], folder, plan.get('stages', {}).get(s['stage'], {}))}"
        else:
            state = "not started"
        rows.append([s["stage"], state, folder.name])
    return rows


def stage_unfinished(stage: str, folder: Path, section: dict[str, Any]) -> str:
    """What an unfinished stage folder holds, in a few words."""
    try:
        return get(stage).unfinished(folder, section)
    except (AugurError, KeyError, TypeError, ValueError):
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
    page = Page(out)
    page.md.extend([f"# {title}", "", f"Made from `{root}` by augur {__version__}.", ""])
    status = plan_status(root)
    if status:
        # A run stopped half-way must not read as a complete one: every stage of the plan, and how far it got.
        page.section("Stages of the plan")
        page.table(["stage", "status", "folder"], status)
    ranked = sorted(stages(), key=lambda s: s.report_rank)
    # the results open with what each comparison of arms says (paired), then every stage's section, results first
    for st, part in [(st, "evidence") for st in ranked] + [(st, "report") for st in ranked]:
        if folders.get(st.name):
            try:
                getattr(st, part)(folders[st.name], page)
            except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
                # a record or result file edited or written by something else: name it, no traceback
                where = ", ".join(str(f) for f in folders[st.name][:3])
                raise AugurError(f"{where}: a {st.name} file there is not as augur writes it "
                                 f"({e.__class__.__name__}: {e}); it cannot be reported") from None
    page.section("Provenance")
    page.table(["stage", "model", "sha256", "seed", "settings"], page.prov)
    page.text(f"Report made on: {platform.machine()} {platform.processor() or ''}, Python {platform.python_version()} "
              "(each stage's own records name the device, precision and threads it ran with).")
    page.table(["package", "version"], [[k, v] for k, v in _versions().items()])
    plan = plan_of(root)
    if plan is not None:  # the recipe last
        page.section("Recipe")
        page.text(f"Recipe `{plan['recipe']}` (name {plan['name']}), seed {plan['seed']}"
                  f"{' (smoke run: tiny stand-ins and cut-down data)' if plan.get('smoke') else ''}.")
        page.markdown("```\n" + json.dumps(plan["stages"], indent=2) + "\n```")
    text = "\n".join(page.md)
    write_text(out / "report.md", text)
    write_text(out / "report.html", _html(text, out, title, set(page.images)))
    return {"markdown": out / "report.md", "html": out / "report.html", "images": [out / i for i in page.images]}


def _html(md: str, folder: Path, title: str, images: set[str]) -> str:
    """A small Markdown subset to HTML, the page's own images inlined as data URIs: one file that opens anywhere.
    An image reference the page did not make (typed into a title, say) stays text."""
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
        if m and m.group(2) in images:
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
