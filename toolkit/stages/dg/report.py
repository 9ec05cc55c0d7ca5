"""The dg stage in a report: its section (DomainBed's tables, bars per held-out domain, the rendered domains,
provenance), the paired comparison that opens a report, and an unfinished recipe folder's progress."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# What makes a row of results.jsonl a DG result row (a report leaves other rows out).
ROW_KEYS = {"label", "selection", "test_domain", "trial_seed", "hparams_seed", "val_acc", "test_acc", "dataset",
            "backbone", "weights"}
RECORD = "dg.json"  # the stage's record in its folder (core/outdir.py: a run's record)


def evidence(folders: list[Path], page: Any) -> None:
    from .compare import evidence as compare_evidence

    compare_evidence(_report_rows(folders)[1], page)


def write_section(folders: list[Path], page: Any) -> None:
    from ...core.files import read_json
    from .collect import tables

    read, rows = _report_rows(folders)
    if read and not rows:
        page.section("Domain generalization")
        page.text(f"(results.jsonl holds {len(read)} row(s), none of them DG result rows: not DG result rows, "
                  "left out.)")
    if not rows:
        return
    page.section("Domain generalization")
    page.text("DomainBed's protocol; mean ± standard error over trials (DomainBed's collect_results format).")
    page.markdown(tables(rows, style="markdown"))
    first = rows[0]["selection"]
    _bars([r for r in rows if r["selection"] == first], page.path("dg_bars.png"))
    page.figure("dg_bars.png", f"DG accuracy per held-out domain ({first})")
    from .sources import rendered_domains

    rendered_domains(rows, folders, page)  # which rendered domains trained, and what each carried
    if len(rows) < len(read):
        page.text(f"({len(read) - len(rows)} row(s) of results.jsonl are not DG result rows and were left out.)")
    for f in folders:
        ident = read_json(f / RECORD).get("identity") or {}
        page.provenance("dg", ident.get("algorithm"), ident.get("weights_sha256") or "random init",
                        ident.get("seed", ""), f"{ident.get('backbone')}, {ident.get('image_size')} px, "
                                               f"data {ident.get('data')}")


def unfinished(folder: Path, section: dict[str, Any]) -> str:
    runs = len(list(folder.glob("runs/*/records.json"))) + len(list(folder.glob("*/runs/*/records.json")))
    return f"{runs} run(s) finished, results.jsonl not complete"


def _report_rows(folders: list[Path]) -> tuple[list[Any], list[dict[str, Any]]]:
    """(every row of the folders' results.jsonl, the DG result rows among them: a foreign or corrupt row is not
    read as a DG result)."""
    from ...core.files import read_jsonl
    from ...core.schema import fits
    from .collect import ROW_SCHEMA, effective_hparams

    read = [effective_hparams(r) for f in folders if (f / "results.jsonl").is_file()
            for r in read_jsonl(f / "results.jsonl", tolerate_torn_tail=True)]
    return read, [r for r in read if isinstance(r, dict) and ROW_KEYS <= set(r) and fits(r, ROW_SCHEMA)]


def _bars(rows: list[dict[str, Any]], path: Path) -> None:
    import numpy as np

    from ..report.page import finish_plot, pyplot

    labels = list(dict.fromkeys(r["label"] for r in rows))
    domains = list(dict.fromkeys(r["test_domain"] for r in rows))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(domains), 3))
    width = 0.8 / max(len(labels), 1)
    for k, a in enumerate(labels):
        means = [100 * float(np.mean([r["test_acc"] for r in rows if r["label"] == a and r["test_domain"] == d] or [0]))
                 for d in domains]
        ax.bar(np.arange(len(domains)) + k * width, means, width, label=a)
    ax.set_xticks(np.arange(len(domains)) + width * (len(labels) - 1) / 2, domains)
    finish_plot(fig, ax, "held-out domain", "test accuracy (%)", path, 7)
