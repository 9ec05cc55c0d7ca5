"""`augur dg collect`: DomainBed's collect_results tables from result rows.

For each model-selection method: for each algorithm (row label), test domain and trial, the
hyper-parameter draw with the best validation accuracy is chosen (SelectionMethod.sweep_acc); then per
test domain the mean over trials and its standard error, formatted as DomainBed's `format_mean`:
100 * mean, 100 * np.std(data / sqrt(n)) (the population standard deviation over sqrt(n)); Avg is
the mean of the per-domain means, X where a cell has no result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...core.errors import AugurError
from ...core.files import read_jsonl
from ...core.schema import NUMBER, split_rows
from ...core.tables import format_table
from .config import SELECTION_NAMES, SELECTIONS


def format_mean(data: list[float]) -> tuple[float | None, str]:
    """(mean, "mean ± err") in percent; the table formatter writes ± as $\\pm$ in LaTeX."""
    if len(data) == 0:
        return None, "X"
    mean = 100 * np.mean(list(data))
    err = 100 * np.std(np.asarray(list(data)) / np.sqrt(len(data)))
    return float(mean), f"{mean:.1f} ± {err:.1f}"


def _row_names(rows: list[dict[str, Any]]) -> dict[int, str]:
    """Labels, with the backbone and weights added when rows of several are collected together."""
    kinds = {(r["backbone"], r["weights"]) for r in rows}
    return {id(r): r["label"] + (f" [{r['backbone']}, {r['weights']}]" if len(kinds) > 1 else "") for r in rows}


def sweep_acc(group: list[dict[str, Any]]) -> float | None:
    """The test accuracy of the hyper-parameter draw with the best validation accuracy (ties: lowest draw)."""
    valid = [r for r in group if r["val_acc"] is not None and not np.isnan(r["val_acc"])]
    if not valid:
        return None
    best = max(valid, key=lambda r: (r["val_acc"], -r["hparams_seed"]))
    return best["test_acc"]


def table(rows: list[dict[str, Any]], selection: str, style: str = "markdown") -> str:
    rows = [r for r in rows if r["selection"] == selection]
    names = _row_names(rows)
    labels = list(dict.fromkeys(names[id(r)] for r in rows))
    # A column per domain of the dataset, as DomainBed's ENVIRONMENTS (X where a cell is missing); with a
    # single source or no real training data, the domains that can be tested.
    lodo = all(r.get("setting", "leave-one-domain-out") == "leave-one-domain-out" for r in rows)
    domains: list[str] = []
    for r in rows:
        for d in r.get("domains", [r["test_domain"]]) if lodo else [r["test_domain"]]:
            if d not in domains:
                domains.append(d)
    body = []
    for label in labels:
        cells, means = [label], []
        for d in domains:
            groups: dict[int, list[dict[str, Any]]] = {}
            for r in rows:
                if names[id(r)] == label and r["test_domain"] == d:
                    groups.setdefault(r["trial_seed"], []).append(r)
            accs = [a for a in (sweep_acc(g) for g in groups.values()) if a is not None]
            mean, text = format_mean(accs)
            means.append(mean)
            cells.append(text)
        cells.append("X" if None in means or not means else f"{sum(means) / len(means):.1f}")
        body.append(cells)
    dataset = rows[0]["dataset"] if rows else "?"
    caption = f"Dataset: {dataset}, model selection method: {SELECTION_NAMES[selection]}"
    return format_table(["Algorithm", *domains, "Avg"], body, style, caption=caption)


def tables(rows: list[dict[str, Any]], selections=SELECTIONS, style: str = "plain") -> str:
    if not rows:
        return "(no results)"
    present = [s for s in selections if any(r["selection"] == s for r in rows)]
    return "\n\n".join(table(rows, s, style) for s in present)


# A DG result row, as `augur dg` writes it (what collect and the report read of it).
ROW_SCHEMA = {"label": (str,), "selection": (str,), "test_domain": (str,), "dataset": (str,), "trial_seed": (int,),
              "hparams_seed": (int,), "val_acc": (*NUMBER, type(None)), "test_acc": NUMBER}


def effective_hparams(row: dict[str, Any]) -> dict[str, Any]:
    """A result row's hparams as applied: DomainBed's `data_augmentation` key holds whether any training
    environment was augmented (`augmented_domains`), not the value asked for. Rows written before this
    was recorded are migrated on read; the run's identity and its records are unchanged."""
    hp = row.get("hparams")
    if not isinstance(hp, dict) or "data_augmentation" not in hp or not isinstance(row.get("augmented_domains"), list):
        return row
    applied = bool(row["augmented_domains"])
    if hp["data_augmentation"] == applied:
        return row
    return {**row, "hparams": {**hp, "data_augmentation": applied}}


def read_rows(dirs: list[Path]) -> list[dict[str, Any]]:
    """Every DG result row under `dirs` (files, or folders searched for results.jsonl), migrated on read."""
    rows: list[dict[str, Any]] = []
    for d in dirs:
        d = Path(d)
        files = [d] if d.is_file() else sorted(d.rglob("results.jsonl"))
        if not files:
            raise AugurError(f"{d}: no results.jsonl (a folder made by `augur dg`)")
        for f in files:
            rows += [effective_hparams(r) for r in split_rows(read_jsonl(f, tolerate_torn_tail=True), ROW_SCHEMA,
                                                              "DG result rows", str(f))]
    if not rows:
        raise AugurError("no DG result rows in " + ", ".join(map(str, dirs)))
    return rows


def collect(dirs: list[Path], style: str = "markdown", compare: str | None = None,
            baseline: str | None = None) -> str:
    """DomainBed's tables; with `compare` ("synthetic"), then the paired comparison of the arms (compare.py)."""
    from .compare import compare_tables, comparisons

    rows = read_rows(dirs)
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    # computed once per dataset, before any table: a dataset whose rows have one arm only is one line
    compared = {ds: comparisons([r for r in rows if r["dataset"] == ds], baseline) for ds in datasets} if compare else {}
    out = []
    for ds in datasets:
        sub = [r for r in rows if r["dataset"] == ds]
        out.append(tables(sub, style=style))
        if compare:
            out.append(compare_tables(sub, compared[ds], style))
    return f"Total records: {len(rows)}\n\n" + "\n\n".join(out)
