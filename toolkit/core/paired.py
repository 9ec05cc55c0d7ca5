"""Paired comparisons of two arms of an experiment: the evidence a delta in a paper needs.

Given one difference per pair (arm minus baseline, the pairs sharing everything but the arm: a test domain,
trial seed and hyper-parameter draw; a class order and seed), `paired(diffs)` gives:
- the mean difference;
- a 95% percentile-bootstrap interval of that mean over the pairs (scipy.stats.bootstrap, method
  "percentile", 9,999 resamples, a fixed seed: the same rows give the same interval);
- a two-sided paired permutation p-value (scipy.stats.permutation_test, permutation_type "samples" on the
  one sample of differences: the null flips the sign of each difference independently). It is exact,
  every one of the 2^n sign patterns, when 2^n <= 9,999 (n <= 13 pairs), else 9,999 random patterns with
  the (count + 1) / (resamples + 1) correction. With n pairs the smallest exact p-value is 2 / 2^n: three
  class orders can never give p < 0.25, which the table shows rather than hides.
One pair has a difference and no interval (None); its p-value is 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 9999
SEED = 0


@dataclass(frozen=True)
class Paired:
    n: int  # pairs
    mean: float  # mean difference (arm - baseline)
    low: float | None  # the interval; None with one pair
    high: float | None
    p: float  # two-sided paired permutation p-value
    exact: bool  # every sign pattern enumerated

    @property
    def too_few(self) -> bool:
        """Too few pairs for p < 0.05 at all: the smallest exact p-value, 2 / 2^n, is above it (n <= 5)."""
        return 2 / 2 ** self.n > 0.05

    @property
    def includes_zero(self) -> bool:
        return self.low is None or self.low <= 0 <= self.high

    def reading(self) -> str:
        """In words: whether the interval says anything about the sign of the difference."""
        if self.low is None:
            return "one pair: no interval"
        if self.includes_zero:
            return "interval includes 0"
        side = "above 0" if self.low > 0 else "below 0"
        # a percentile interval of a handful of pairs is narrow where the permutation test cannot speak: say so
        if self.too_few:
            return f"{side}, but {self.n} pairs cannot reach p < 0.05"
        return side if self.p <= 0.05 else f"{side}, but p > 0.05"


def _mean(x, axis=-1):
    return np.mean(x, axis=axis)


def paired(diffs, seed: int = SEED) -> Paired:
    from scipy import stats

    d = np.asarray(list(diffs), dtype=float)
    if d.ndim != 1 or len(d) == 0:
        raise ValueError("paired(): give one difference per pair")
    mean = float(d.mean())
    if len(d) == 1:
        return Paired(1, mean, None, None, 1.0, True)
    if np.all(d == d[0]):
        low = high = float(d[0])  # every resample has the same mean (scipy warns on a degenerate sample)
    else:
        ci = stats.bootstrap((d,), _mean, confidence_level=CONFIDENCE, n_resamples=RESAMPLES, method="percentile",
                             vectorized=True, rng=np.random.default_rng(seed)).confidence_interval
        low, high = float(ci.low), float(ci.high)
    exact = 2 ** len(d) <= RESAMPLES
    test = stats.permutation_test((d,), _mean, permutation_type="samples", vectorized=True, n_resamples=RESAMPLES,
                                  alternative="two-sided", rng=np.random.default_rng(seed))
    return Paired(len(d), mean, low, high, float(min(test.pvalue, 1.0)), exact)


def about(points: bool = True) -> str:
    """The one paragraph a table of comparisons is read with."""
    unit = " in percentage points" if points else ""
    return (f"Difference arm − baseline{unit}, mean over pairs; 95% percentile-bootstrap interval over the pairs "
            f"({RESAMPLES:,} resamples, seed {SEED}); p: two-sided paired permutation test (sign flips; exact up to "
            f"13 pairs, else {RESAMPLES:,} random flips). An interval that includes 0 is no evidence of a difference.")


@dataclass(frozen=True)
class Comparison:
    """One line of a comparison table: an arm against the baseline on one measure of one group of runs."""

    group: str  # what the pairs share besides their unit (an algorithm; a strategy)
    arm: str
    baseline: str
    measure: str  # a test domain, "Avg"; a CL metric
    baseline_mean: float
    arm_mean: float
    result: Paired


def compare_units(group: str, measure: str, arm: str, baseline: str, values: dict[str, dict[tuple, float]]
                  ) -> Comparison | None:
    """values[arm][unit] -> a number; the units both arms have are the pairs (None when there are none)."""
    units = [u for u in values.get(baseline, {}) if u in values.get(arm, {})]
    if not units:
        return None
    base = np.array([values[baseline][u] for u in units])
    other = np.array([values[arm][u] for u in units])
    return Comparison(group, arm, baseline, measure, float(base.mean()), float(other.mean()), paired(other - base))


def pick_baseline(arms: list[str], asked: str | None, preferred: tuple[str, ...], what: str) -> str:
    """The arm the others are compared with: the one asked for, else the first of `preferred` present, else the
    first arm found."""
    from .errors import AugurError

    if len(arms) < 2:
        raise AugurError(f"--compare {what}: the rows have one arm only ({', '.join(arms) or 'none'}); a comparison "
                         f"needs runs that differ in {what} (a grid, or several folders)")
    if asked is not None:
        if asked not in arms:
            raise AugurError(f"--baseline {asked}: not one of the arms here ({', '.join(arms)})")
        return asked
    return next((a for a in preferred if a in arms), arms[0])


def points(x: float, signed: bool = False) -> str:
    return f"{100 * x:+.1f}" if signed else f"{100 * x:.1f}"


def comparison_table(comparisons: list[Comparison], group_name: str, measure_name: str, style: str = "markdown",
                     caption: str | None = None) -> str:
    from .tables import format_table

    body = []
    for c in comparisons:
        r = c.result
        ci = "n/a" if r.low is None else f"[{points(r.low, True)}, {points(r.high, True)}]"
        body.append([c.group, f"{c.arm} vs {c.baseline}", c.measure, r.n, points(c.baseline_mean),
                     points(c.arm_mean), points(r.mean, True), ci, f"{r.p:.3g}", r.reading()])
    return format_table([group_name, "arms", measure_name, "pairs", "baseline", "arm", "difference", "95% CI", "p",
                         "reading"], body, style, caption=caption)


def summary(comparisons: list[Comparison], where: str) -> str:
    """The comparisons in plain words, saying so when an interval includes 0."""
    parts = []
    for c in comparisons:
        r = c.result
        head = f"{c.group}, {c.arm} vs {c.baseline} {where if c.measure == 'Avg' else c.measure}: " \
               f"{points(r.mean, True)} points over {r.n} pair{'s' if r.n != 1 else ''}"
        if r.low is None:
            parts.append(head + " (one pair: no interval, no evidence either way).")
        elif r.includes_zero:
            parts.append(head + f", 95% CI [{points(r.low, True)}, {points(r.high, True)}] includes 0: these runs show "
                                f"no clear difference (p = {r.p:.3g}).")
        else:
            parts.append(head + f", 95% CI [{points(r.low, True)}, {points(r.high, True)}] "
                                f"{'above' if r.low > 0 else 'below'} 0 (p = {r.p:.3g}"
                                + (f"; {r.n} pairs cannot give p < 0.05: add trials or seeds for a claim)."
                                   if r.too_few else ")."))
    return " ".join(parts)
