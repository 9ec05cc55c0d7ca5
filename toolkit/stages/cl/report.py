"""The cl stage in a report: its section (table, curves, accuracy matrices, provenance), the paired comparison that
opens a report, and an unfinished recipe folder's progress."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# What makes a results.jsonl row a CL run's final row (a report leaves other rows out).
ROW_KEYS = {"strategy", "weights", "backbone", "protocol", "incremental_accuracy", "average_incremental_accuracy",
            "last_accuracy", "average_forgetting", "class_order", "seed"}


def evidence(folders: list[Path], page: Any) -> None:
    from .compare import evidence as compare_evidence

    compare_evidence(_final_rows(folders), page)


def write_section(folders: list[Path], page: Any) -> None:
    from .stage import table

    results = _final_rows(folders)
    if not results:
        return
    page.section("Continual learning")
    page.text("Class-incremental, single head. Average incremental accuracy (mean over steps of the accuracy "
              "on all classes seen so far), last accuracy, average forgetting (Chaudhry et al.), in %.")
    page.markdown(table(results, "markdown"))
    _curves(results, page.path("cl_curves.png"))
    page.figure("cl_curves.png", "accuracy on all seen classes after each step")
    for f in folders:
        if (f / "accuracy_matrix.png").is_file():
            page.image(f / "accuracy_matrix.png", f"accuracy matrix {f.name}", prefix="cl_matrix")
    for r in results:
        page.provenance("cl", r["strategy"], r.get("weights_sha256") or "random init", r["seed"],
                        f"{r['backbone']}, {r['protocol']}, order {r['class_order']}")


def unfinished(folder: Path, section: dict[str, Any]) -> str:
    from ...core.files import read_jsonl

    total = 1
    for key in ("strategies", "weights", "class_orders"):
        total *= len(section.get(key) or [1])
    done = sum(1 for f in folder.glob("*/results.jsonl")
               if any(r.get("final") for r in read_jsonl(f, tolerate_torn_tail=True)))
    return f"{done} of {total} runs finished"


def _final_rows(folders: list[Path]) -> list[dict[str, Any]]:
    """The final row of each folder's run (a foreign or corrupt row is left out)."""
    from ...core.files import read_jsonl
    from ...core.schema import fits
    from .stage import ROW_SCHEMA

    results = [rows[-1] for f in folders if (f / "results.jsonl").is_file()
               for rows in [read_jsonl(f / "results.jsonl", tolerate_torn_tail=True)] if rows]
    return [r for r in results if isinstance(r, dict) and r.get("final") and ROW_KEYS <= set(r) and fits(r, ROW_SCHEMA)]


def _curves(results: list[dict[str, Any]], path: Path) -> None:
    from ..report.page import finish_plot, pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 3))
    for r in results:
        inc = r["incremental_accuracy"]
        ax.plot(range(1, len(inc) + 1), [100 * v for v in inc], marker="o",
                label=f"{r['strategy']} ({r['weights']}, order {r['class_order']})")
    finish_plot(fig, ax, "after step", "accuracy on all seen classes (%)", path, 6)
