"""`augur dg collect DIR --compare synthetic`: what the synthetic data changed, run for run.

An arm is what the runs trained on besides the real data: `none`, or a synthetic folder (and how its
domains joined: one environment or one per rendered domain). Every other arm is compared with the
baseline (`none` when present, else the first arm found, or `--baseline`). A pair is two result rows
that share the model-selection method, the algorithm (with SWAD, LoRA), backbone, weights and dataset,
the test domain, the trial seed and the hyper-parameter draw (DomainBed's draw h is the same
hyper-parameters in both arms), and differ only in the arm. Per test domain, the pairs are the (trial,
draw) units; on the average, each (trial, draw) unit that has every test domain in both arms gives one
pair: the mean over domains of its test accuracy. Statistics: core/paired.py.

A data-free arm is paired with the baseline's leave-one-domain-out runs on the same test domain: the
comparison then says what replacing the real training domains by rendered ones costs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...core.paired import Comparison, about, compare_units, comparison_table, pick_baseline
from .config import SELECTION_NAMES

def arm_names(rows: list[dict[str, Any]]) -> dict[tuple, str]:
    """(synthetic, synthetic_envs) -> a short name: the folder's name (its path where two names clash)."""
    keys = list(dict.fromkeys((r.get("synthetic"), r.get("synthetic_envs") if r.get("synthetic") else None)
                              for r in rows))
    short = [Path(s).name for s, _ in keys if s]
    names = {}
    for s, envs in keys:
        if not s:
            names[(s, envs)] = "none"
            continue
        name = Path(s).name if short.count(Path(s).name) == 1 else s
        names[(s, envs)] = name + (f" ({envs})" if envs and envs != "one" else "")
    return names


def _arm(r: dict[str, Any], names: dict[tuple, str]) -> str:
    s = r.get("synthetic")
    name = names[(s, r.get("synthetic_envs") if s else None)]
    return name + (", data-free" if r.get("setting") == "data-free" else "")


def _group(r: dict[str, Any], several_kinds: bool) -> str:
    label = r.get("algorithm", r["label"].split("+")[0]) + ("+SWAD" if r.get("swad") else "") + \
        ("+LoRA" if r.get("lora") else "")
    return label + (f" [{r.get('backbone')}, {r.get('weights')}]" if several_kinds else "")


def comparisons(rows: list[dict[str, Any]], baseline: str | None = None) -> tuple[str, dict[str, list[Comparison]]]:
    """(the baseline arm, selection method -> its comparison lines); the rows of one dataset."""
    names = arm_names(rows)
    arms = list(dict.fromkeys(_arm(r, names) for r in rows))
    base = pick_baseline(arms, baseline, ("none",), "synthetic")
    several = len({(r.get("backbone"), r.get("weights")) for r in rows}) > 1
    out: dict[str, list[Comparison]] = {}
    for method in dict.fromkeys(r["selection"] for r in rows):
        sub = [r for r in rows if r["selection"] == method]
        lines = []
        for group in dict.fromkeys(_group(r, several) for r in sub):
            g = [r for r in sub if _group(r, several) == group]
            # values[arm][(test domain, trial, draw)] -> test accuracy
            values: dict[str, dict[tuple, float]] = {}
            for r in g:
                values.setdefault(_arm(r, names), {})[(r["test_domain"], r["trial_seed"], r["hparams_seed"])] = \
                    r["test_acc"]
            domains = list(dict.fromkeys(r["test_domain"] for r in g))
            for arm in arms:
                if arm == base or arm not in values:
                    continue
                for d in domains:
                    per = {a: {(t, h): v for (dd, t, h), v in vals.items() if dd == d} for a, vals in values.items()}
                    c = compare_units(group, d, arm, base, per)
                    if c:
                        lines.append(c)
                both = [d for d in domains if any(k[0] == d for k in values[base]) and any(k[0] == d for k in values[arm])]
                avg = {a: _averages(values[a], both) for a in (base, arm)}
                c = compare_units(group, "Avg", arm, base, avg)
                if c and len(both) > 1:
                    lines.append(c)
        if lines:
            out[method] = lines
    return base, out


def _averages(values: dict[tuple, float], domains: list[str]) -> dict[tuple, float]:
    """(trial, draw) -> the mean test accuracy over `domains`, for the units that have every one of them."""
    units = dict.fromkeys((t, h) for (_, t, h) in values)
    return {u: sum(values[(d, *u)] for d in domains) / len(domains) for u in units
            if all((d, *u) in values for d in domains)}


def compare_tables(rows: list[dict[str, Any]], compared: tuple[str, dict[str, list[Comparison]]],
                   style: str = "markdown") -> str:
    """The tables of `compared` (comparisons(rows, ...)) for the rows of one dataset."""
    base, by_method = compared
    dataset = rows[0]["dataset"]
    parts = []
    for method, lines in by_method.items():
        caption = (f"What the synthetic data changed. Dataset: {dataset}, model selection method: "
                   f"{SELECTION_NAMES.get(method, method)}, baseline arm: {base}")
        parts.append(comparison_table(lines, "Algorithm", "test domain", style, caption))
    if not parts:
        return f"(no pairs: no result row of another arm shares a test domain, trial seed and draw with {base})"
    return "\n\n".join(parts) + "\n\n" + about() + " Pairs: same test domain, trial seed and hyper-parameter draw."


def evidence(rows: list[dict[str, Any]], page: Any) -> None:
    """The report's opening table when its DG rows hold more than one arm: what the synthetic data changed."""
    from ...core.paired import summary

    for ds in dict.fromkeys(r["dataset"] for r in rows):
        sub = [r for r in rows if r["dataset"] == ds]
        names = arm_names(sub)
        if len({_arm(r, names) for r in sub}) < 2:
            continue
        base, by_method = comparisons(sub)
        page.section("What the synthetic data changed")
        page.text(f"Dataset {ds}. Each synthetic arm against the baseline arm `{base}`, run for run: pairs share the "
                  "test domain, trial seed and hyper-parameter draw. " + about())
        for method, lines in by_method.items():
            page.markdown(comparison_table(lines, "Algorithm", "test domain", "markdown",
                                           f"Model selection: {SELECTION_NAMES.get(method, method)}"))
            page.text(summary([c for c in lines if c.measure == "Avg"] or lines, "on the average over test domains"))
