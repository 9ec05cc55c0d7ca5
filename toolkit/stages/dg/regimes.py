"""The three ways a DG sweep uses the real domains, each chosen once per sweep (`regime_of`):

- leave-one-domain-out (DomainBed): a run per test domain, training on every other real domain (and the
  synthetic ones); leave-one-out selection adds a run per pair of held-out domains;
- single source: one run per trial and draw, training on one real domain (and the synthetic ones), testing
  on every other;
- data-free: one run per trial and draw, training on the synthetic domains only, testing on every real one.

What differs between them lives here: which environments a run trains on, which runs a sweep needs, which
domains its rows are about, which selection methods apply, and how the plan is described.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Regime:
    """Leave-one-domain-out, DomainBed's own; the others override what differs."""

    cfg: Any  # the sweep's DGConfig
    name = "leave-one-domain-out"
    pairs = True  # leave-one-out selection (its pair runs) applies

    def train_envs(self, test_envs: tuple[str, ...], real_names: list[str], synthetic_names: list[str]) -> list[str]:
        """The environments a run trains on (DomainBed: every environment not held out)."""
        return [n for n in real_names if n not in test_envs] + list(synthetic_names)

    def held_out(self, tests: list[str], real_names: list[str]) -> list[tuple[str, ...]]:
        """The held-out domains of each run of one trial and draw."""
        out, pairs = [], set()
        for t in tests:
            out.append((t,))
            if "leave-one-out" in self.cfg.selection:
                pairs |= {tuple(sorted((t, v), key=real_names.index)) for v in real_names if v != t}
        return out + sorted(pairs, key=lambda p: [real_names.index(x) for x in p])

    def tests(self, tests: list[str]) -> list[str]:
        return tests

    def row_tests(self, test_envs: tuple[str, ...], tests: list[str]) -> list[str]:
        """The test domains a run's rows are about (none for a pair run: it is read through a single run)."""
        return [test_envs[0]] if len(test_envs) == 1 and test_envs[0] in tests else []

    def why(self, tests: list[str], per: str, pair_runs: int) -> str:
        why = f"{_count(len(tests), 'test domain')} x {per}"
        return why + (f", + {_count(pair_runs, 'pair')} of domains for leave-one-domain-out x {per}" if pair_runs else "")


class SingleSource(Regime):
    name = "single-source"
    pairs = False

    def train_envs(self, test_envs, real_names, synthetic_names):
        return [self.cfg.single_source, *synthetic_names]

    def held_out(self, tests, real_names):
        return [tuple(n for n in real_names if n != self.cfg.single_source)]

    def tests(self, tests):
        return [t for t in tests if t != self.cfg.single_source]

    def row_tests(self, test_envs, tests):
        return [t for t in tests if t in test_envs]

    def why(self, tests, per, pair_runs):
        return f"single source {self.cfg.single_source}, testing on {_count(len(tests), 'domain')}: {per}"


class DataFree(Regime):
    name = "data-free"
    pairs = False

    def train_envs(self, test_envs, real_names, synthetic_names):
        return list(synthetic_names)

    def held_out(self, tests, real_names):
        return [tuple(real_names)]

    def row_tests(self, test_envs, tests):
        return [t for t in tests if t in test_envs]

    def why(self, tests, per, pair_runs):
        return f"data-free, testing on {_count(len(tests), 'domain')}: {per}"


def regime_of(cfg) -> Regime:
    return DataFree(cfg) if cfg.data_free else SingleSource(cfg) if cfg.single_source else Regime(cfg)


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"
