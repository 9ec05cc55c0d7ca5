"""`augur cl collect DIR --compare weights`: what the backbone's weights changed, run for run.

An arm is a run's weights (random, imagenet (card), pretrained:<folder>). Every other arm is compared
with the baseline: ImageNet weights when present (Premonition's claim is a pretrained backbone against
ImageNet alone), else random initialisation, else the first arm found, or `--baseline`. A pair is two
final rows that share the strategy, protocol, data and backbone architecture, the class order and the
seed, and differ only in the weights. Measures: average incremental accuracy, last accuracy and average
forgetting (lower forgetting is better: a negative difference is a gain). Statistics: core/paired.py.
"""

from __future__ import annotations

from typing import Any

from ...core.paired import Comparison, about, compare_units, comparison_table, pick_baseline

MEASURES = {"average_incremental_accuracy": "avg inc acc", "last_accuracy": "last acc",
            "average_forgetting": "forgetting"}


def _group(r: dict[str, Any], several: dict[str, bool]) -> str:
    extra = [str(r.get(k)) for k in ("protocol", "backbone", "data") if several[k]]
    return r["strategy"] + (f" [{', '.join(extra)}]" if extra else "")


def comparisons(rows: list[dict[str, Any]], baseline: str | None = None) -> tuple[str, list[Comparison]]:
    arms = list(dict.fromkeys(r["weights"] for r in rows))
    preferred = tuple(a for a in arms if a.startswith("imagenet")) + ("random",)
    base = pick_baseline(arms, baseline, preferred, "weights")
    several = {k: len({str(r.get(k)) for r in rows}) > 1 for k in ("protocol", "backbone", "data")}
    lines = []
    for group in dict.fromkeys(_group(r, several) for r in rows):
        g = [r for r in rows if _group(r, several) == group]
        for arm in arms:
            if arm == base:
                continue
            for key, name in MEASURES.items():
                values: dict[str, dict[tuple, float]] = {}
                for r in g:
                    values.setdefault(r["weights"], {})[(str(r.get("class_order")), r.get("seed"))] = r[key]
                c = compare_units(group, name, arm, base, values)
                if c:
                    lines.append(c)
    return base, lines


def compare_table(rows: list[dict[str, Any]], baseline: str | None = None, style: str = "markdown") -> str:
    base, lines = comparisons(rows, baseline)
    if not lines:
        return f"(no pairs: no run of another arm shares a strategy, class order and seed with {base})"
    caption = f"What the weights changed, baseline arm: {base}"
    return (comparison_table(lines, "strategy", "measure", style, caption) + "\n\n" + about()
            + " Pairs: same strategy, class order and seed.")


def evidence(rows: list[dict[str, Any]], page: Any) -> None:
    """The report's opening table when its CL runs hold more than one set of weights."""
    from ...core.paired import summary

    if len({r["weights"] for r in rows}) < 2:
        return
    base, lines = comparisons(rows)
    page.section("What the weights changed")
    page.text(f"Each set of weights against `{base}`, run for run: pairs share the strategy, class order and seed. "
              + about() + " Forgetting: lower is better.")
    if lines:
        page.markdown(comparison_table(lines, "strategy", "measure", "markdown"))
        page.text(summary([c for c in lines if c.measure == "avg inc acc"], ""))
    else:
        page.text(f"(no pairs: no run of another arm shares a strategy, class order and seed with {base})")
