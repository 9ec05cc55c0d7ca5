"""DomainBed's three model-selection methods (domainbed/model_selection.py), on one run's checkpoint records.

A record holds, for every environment and split, [correct, total] counts: `acc[env]["in"]`,
`acc[env]["out"]`. Each method picks one checkpoint and reports its validation accuracy (what it
selected on) and the test domain's accuracy there:
- training-domain: the step maximising the mean, over training environments, of their out-split
  accuracy (environments averaged, not pooled by size), and the test domain's accuracy at that step;
  an environment too small to hold anything out (a rendered domain of 4 images: int(4 * 0.2) = 0)
  has no out-split accuracy and is left out of the mean rather than turning it into NaN;
- leave-one-out: with one more run per other real domain v (test environments {t, v}), the step
  maximising the mean over v of v's in-split accuracy in its run; the test accuracy is read from the
  run that held out t alone, at the same step;
- oracle (test-domain validation): the last checkpoint (no early stopping); its val_acc is the test
  domain's out-split accuracy, which collect uses to choose among hyper-parameters.
With SWAD there is no checkpoint to choose: the averaged model is evaluated once, and each method's
validation accuracy is read off it (the pair runs' averaged models for leave-one-out).
Test accuracy is DomainBed's: `test_acc` is the test domain's in-split accuracy (`env{t}_in_acc`, what
its tables print; the out-split is what the oracle selects on). The whole test domain (in + out
splits) is kept beside it as `test_whole_acc`.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def acc(record: dict[str, Any], env: str, split: str) -> float:
    c, n = record["acc"][env][split]
    return c / n if n else float("nan")


def whole(record: dict[str, Any], env: str) -> float:
    (ci, ni), (co, no) = record["acc"][env]["in"], record["acc"][env]["out"]
    return (ci + co) / (ni + no) if ni + no else float("nan")


def _argmax(candidates: list[tuple[float, dict[str, Any]]]):
    """The first maximum (earliest step among ties), as DomainBed's Q.argmax."""
    best = None
    for val, rec in candidates:
        if not np.isnan(val) and (best is None or val > best[0]):
            best = (val, rec)
    return best


def validation_envs(record: dict[str, Any], train_envs: list[str]) -> list[str]:
    """The training environments with a non-empty out-split: the ones training-domain validation averages."""
    return [e for e in train_envs if record["acc"][e]["out"][1] > 0]


def training_domain(records: list[dict[str, Any]], train_envs: list[str], test_env: str):
    picked = _argmax([(float(np.mean([acc(r, e, "out") for e in validation_envs(r, train_envs)] or [np.nan])), r)
                      for r in records])
    if picked is None:
        return None
    return {**_row(picked[0], picked[1], test_env), "validation_domains": validation_envs(picked[1], train_envs)}


def oracle(records: list[dict[str, Any]], test_env: str):
    last = max(records, key=lambda r: r["step"])
    return _row(acc(last, test_env, "out"), last, test_env)


def leave_one_out(records: list[dict[str, Any]], pair_records: dict[str, list[dict[str, Any]]], test_env: str):
    """pair_records[v]: the records of the run whose test environments were {test_env, v}."""
    by_step = {v: {r["step"]: r for r in recs} for v, recs in pair_records.items()}
    candidates = []
    for r in records:
        if not all(r["step"] in steps for steps in by_step.values()):
            continue
        val = float(np.mean([acc(by_step[v][r["step"]], v, "in") for v in pair_records]))
        candidates.append((val, r))
    picked = _argmax(candidates)
    return None if picked is None else _row(picked[0], picked[1], test_env)


def leave_one_out_final(record: dict[str, Any], pair_finals: dict[str, dict[str, Any]], test_env: str):
    """Leave-one-out for a model with no step to choose (SWAD's average): each pair run's final model is
    scored on its held-out v's in-split; the mean is the validation accuracy (it chooses among draws)."""
    val = float(np.mean([acc(pair_finals[v], v, "in") for v in pair_finals]))
    return _row(val, record, test_env)


def _row(val: float, record: dict[str, Any], test_env: str) -> dict[str, Any]:
    return {"val_acc": val, "test_acc": acc(record, test_env, "in"), "test_whole_acc": whole(record, test_env),
            "selected_step": record["step"]}
