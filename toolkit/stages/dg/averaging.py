"""What a DG run keeps as its model, chosen once per sweep (`averaging_of`):

- its weights at each checkpoint, as DomainBed does (`LastWeights`);
- with --swad, SWAD's dense average over the training domains' validation-loss valley (`Swad`; the
  averaging itself is swad.py's, after khanrc/swad).

What differs between them lives here: how often a run is evaluated, whether it needs validation images,
what wraps the algorithm, what each checkpoint tells it, what the run's record gains at the end, and
how model selection reads a finished run, and what a result row's label says.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import selection as sel


class LastWeights:
    """DomainBed's: every checkpoint is a candidate model; model selection picks one."""

    label = ""  # what a result row's label adds
    # Evaluation cadence by the data's size: DomainBed's (MultipleDomainDataset's 100, RotatedMNIST's; 300 for
    # its image folders).
    checkpoint_freq = {"small": 100, "large": 300}
    needs_validation = False  # whether the run needs held-out images of its training domains

    def wrap(self, algorithm: Any, hparams: dict[str, Any]) -> Any:
        return algorithm

    def at_checkpoint(self, learner: Any, step: int, record: dict[str, Any], val_envs: list[Any]) -> None:
        """What an evaluation tells the learner."""

    def finish(self, learner: Any, rp: Any, stream: Any, evaluate: Any, last_step: int) -> dict[str, Any]:
        """What the run's record gains once training ends."""
        return {}

    def candidates(self, run: dict[str, Any]) -> list[dict[str, Any]]:
        """The evaluations of a finished run (its records.json) that model selection chooses among."""
        return run["records"]

    def leave_one_out(self, run: dict[str, Any], pairs: dict[str, dict[str, Any]], test: str) -> dict[str, Any] | None:
        """Leave-one-out selection's row for `test`, from the run and its pair runs (held-out domain -> run)."""
        return sel.leave_one_out(run["records"], {v: p["records"] for v, p in pairs.items()}, test)

    def row_fields(self, run: dict[str, Any]) -> dict[str, Any]:
        """What each result row of a finished run adds about the averaging."""
        return {}


class Swad(LastWeights):
    """SWAD's: the averaged weights, evaluated once at the end, beside the checkpoints."""

    label = "+SWAD"
    # SWAD's own cadence (khanrc/swad datasets.py: 100, and 200 for its image folders): its loss-valley windows
    # count evaluations.
    checkpoint_freq = {"small": 100, "large": 200}
    needs_validation = True  # the valley is found on the training domains' validation loss

    def wrap(self, algorithm: Any, hparams: dict[str, Any]) -> Any:
        from .swad import SWAD

        return SWAD(algorithm, hparams)

    def at_checkpoint(self, learner: Any, step: int, record: dict[str, Any], val_envs: list[Any]) -> None:
        learner.evaluated(step, float(np.mean([record["loss"][e.name]["out"] for e in val_envs])))

    def finish(self, learner: Any, rp: Any, stream: Any, evaluate: Any, last_step: int) -> dict[str, Any]:
        """SWAD's averaged weights, their BatchNorm statistics re-estimated on training batches (unless
        frozen), evaluated once."""
        import torch

        from .swad import update_bn

        averaged = learner.averaged_model()
        averaged_steps = learner.final_range()
        if not rp.hparams.get("freeze_bn") and rp.hparams["swad_bn_steps"] > 0:
            update_bn(averaged, stream(rp.steps, rp.steps + int(rp.hparams["swad_bn_steps"])),
                      next(averaged.parameters()).device)
        averaged.eval()
        with torch.inference_mode():
            return {"swad": {"step": last_step, **evaluate(averaged),
                             **{k: learner.meta[k] for k in ("converge_step", "dead_valley")},
                             "averaged_steps": averaged_steps}}


    def candidates(self, run: dict[str, Any]) -> list[dict[str, Any]]:
        # the model is the averaged one, evaluated once: each method selects on its numbers (one candidate per
        # run; selection chooses among hyper-parameter draws in collect)
        return [run["swad"]]

    def leave_one_out(self, run: dict[str, Any], pairs: dict[str, dict[str, Any]], test: str) -> dict[str, Any] | None:
        return sel.leave_one_out_final(run["swad"], {v: p["swad"] for v, p in pairs.items()}, test)

    def row_fields(self, run: dict[str, Any]) -> dict[str, Any]:
        return {"swad_steps": run["swad"]["averaged_steps"], "swad_dead_valley": run["swad"]["dead_valley"]}


def averaging_of(cfg: Any) -> LastWeights:
    return Swad() if cfg.swad else LastWeights()
