"""`augur cl collect DIR --compare weights`: what the backbone's weights changed, run for run.

An arm is a run's weights (random, imagenet (card), pretrained:<folder>). Every other arm is compared
with the baseline: ImageNet weights when present (Premonition's claim is a pretrained backbone against
ImageNet alone), else random initialisation, else the first arm found, or `--baseline`. A pair is two
final rows that share the strategy and its settings (hyper-parameters, epochs, optimiser, LoRA), protocol,
data and backbone architecture, the class order and the seed, and differ only in the weights. Measures: average incremental accuracy, last accuracy and average
forgetting (lower forgetting is better: a negative difference is a gain). Statistics: core/paired.py.
"""

from __future__ import annotations

from typing import Any

from ...core.paired import Comparison, about, compare_units, comparison_table, pick_baseline

MEASURES = {"average_incremental_accuracy": "avg inc acc", "last_accuracy": "last acc",
            "average_forgetting": "forgetting"}


# The run settings besides the strategy's hyper-parameters that make two runs of one strategy different runs:
# runs that differ in them are never averaged together or paired (their class orders are not repeats).
RUN_SETTINGS = ("epochs", "optimizer", "lr", "weight_decay", "lora", "lora_rank")


def _settings(r: dict[str, Any]) -> dict[str, str]:
    hp = r.get("hparams") if isinstance(r.get("hparams"), dict) else {}
    return {**{k: str(v) for k, v in sorted(hp.items())}, **{k: str(r.get(k)) for k in RUN_SETTINGS if k in r}}


def variant_labels(rows: list[dict[str, Any]]) -> list[str]:
    """Each row's strategy, with `(key=value, ...)` for the settings in which that strategy's rows differ
    (fsa with petl=adapter and petl=ssf are two lines, not one averaged over both); the bare name where they
    agree."""
    by_strategy: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        by_strategy.setdefault(r["strategy"], []).append(_settings(r))
    differing = {name: [k for k in dict.fromkeys(k for s in ss for k in s) if len({s.get(k) for s in ss}) > 1]
                 for name, ss in by_strategy.items()}
    labels = []
    for r in rows:
        s = _settings(r)
        shown = ", ".join(f"{k}={s.get(k)}" for k in differing[r["strategy"]])
        labels.append(r["strategy"] + (f" ({shown})" if shown else ""))
    return labels


def _group(r: dict[str, Any], label: str, several: dict[str, bool]) -> str:
    extra = [str(r.get(k)) for k in ("protocol", "backbone", "data") if several[k]]
    return label + (f" [{', '.join(extra)}]" if extra else "")


def comparisons(rows: list[dict[str, Any]], baseline: str | None = None) -> tuple[str, list[Comparison]]:
    arms = list(dict.fromkeys(r["weights"] for r in rows))
    preferred = tuple(a for a in arms if a.startswith("imagenet")) + ("random",)
    base = pick_baseline(arms, baseline, preferred, "weights")
    several = {k: len({str(r.get(k)) for r in rows}) > 1 for k in ("protocol", "backbone", "data")}
    groups = [_group(r, label, several) for r, label in zip(rows, variant_labels(rows))]
    lines = []
    for group in dict.fromkeys(groups):
        g = [r for r, gr in zip(rows, groups) if gr == group]
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
