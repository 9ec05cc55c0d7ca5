"""`augur run RECIPE --smoke`: the whole recipe, end to end, in minutes on a CPU, before a GPU-day is spent.

Every stage shrinks its own settings (`Stage.smoke` in its descriptor, stages/<name>/__init__.py):
- every model is replaced by its tiny stand-in (models/tiny.py: the real folder's structure, random
  weights; the embedded Gemma with the card's prompting style for LLM cards), pulled on first use;
- every data path is replaced by a small built-in dataset of the same layout, made of real digits
  (stages/smoke_data.py): for dg, the recipe's domains (the extrapolate stage's exclude_domains and the
  single source, when it names them) and its classes (the extrapolate classes the rendered domains must
  match); for cl, a train/test split of six classes;
- counts are cut down: classes, images, epochs, steps, trials, class orders, random projection sizes.
Everything else, stage wiring and settings checks included, runs as the real recipe would, so a
recipe that does not fit together fails here.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from ..stages.descriptor import SmokeContext, get


def smoke_stages(stages: dict[str, Any], data_root: Path, build: bool = True) -> dict[str, Any]:
    """A recipe's stage settings (name -> settings, in pipeline order) -> those of its smoke run."""
    ctx = SmokeContext(Path(data_root), build)
    smoked = {}
    for name, settings in stages.items():
        smoked[name] = get(name).smoke(copy.deepcopy(settings), ctx)
        ctx.exports[name] = get(name).exports(smoked[name])  # what later stages' smoke settings must agree with
    return smoked
