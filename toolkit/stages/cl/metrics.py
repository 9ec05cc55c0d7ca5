"""Class-incremental metrics as the field reports them (Rebuffi et al.; PyCIL; Mammoth; Avalanche).

`counts[t][j]` = [correct, total] on task j's test samples after training step t (j <= t). From it:
- A_t, the accuracy over the pooled test samples of all classes seen after step t:
  sum_j correct / sum_j total (tasks of different sizes weigh by their samples);
- average incremental accuracy = mean_t A_t; last accuracy = A_T;
- the per-task accuracy matrix a[t][j] = correct / total;
- average forgetting (Chaudhry et al., 2018): for each task j < T, max over l in [j, T-1) of a[l][j]
  minus a[T][j], averaged over j (T = the last step).
Everything is a fraction in [0, 1].
"""

from __future__ import annotations

from typing import Any

import numpy as np


def pooled(counts_row: list[list[int]]) -> float:
    correct = sum(c for c, _ in counts_row)
    total = sum(n for _, n in counts_row)
    return correct / total if total else float("nan")


def matrix(counts: list[list[list[int]]], n_tasks: int) -> list[list[float | None]]:
    return [[(c / n if n else None) for c, n in row] + [None] * (n_tasks - len(row)) for row in counts]


def metrics(counts: list[list[list[int]]]) -> dict[str, Any]:
    T = len(counts)
    a = [[c / n if n else float("nan") for c, n in row] for row in counts]
    incremental = [pooled(row) for row in counts]
    forgetting = float(np.mean([max(a[l][j] for l in range(j, T - 1)) - a[T - 1][j] for j in range(T - 1)])) \
        if T > 1 else 0.0
    return {"incremental_accuracy": incremental, "average_incremental_accuracy": float(np.mean(incremental)),
            "last_accuracy": incremental[-1], "average_forgetting": forgetting}
