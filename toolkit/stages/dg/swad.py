"""SWAD (Cha et al., NeurIPS 2021): dense stochastic weight averaging over the loss valley, wrapping any
DG algorithm. The logic is SWAD's own (khanrc/swad: swad.py `LossValley`, swa_utils `AveragedModel`):

- between two evaluations, the weights after every step are averaged into a *segment*
  (AveragedModel's running mean, p + (q - p) / (n + 1));
- at each evaluation the segment is frozen with the training-domain validation loss (the mean over
  training environments of their out-split loss), and a new one starts;
- converged: the oldest of the last n_converge segments has the lowest loss; the averaging range then
  starts there, with threshold = mean loss of those segments x (1 + tolerance_ratio);
- after convergence each segment leaving the n_tolerance smoothing window joins the final average
  while the window's minimum loss stays under the threshold; when it rises above, the valley is dead
  and training stops early, as in SWAD's train loop;
- at the end the remaining window is drained the same way, and BatchNorm statistics are re-estimated
  for the averaged weights (swa_utils.update_bn) unless BatchNorm is frozen.

Every piece of that state is a buffer or JSON, so a killed run resumes exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ...learn.loop import Learner


def _flat(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).float() for p in module.parameters()])


def _unflat(module: nn.Module, flat: torch.Tensor) -> None:
    offset = 0
    with torch.no_grad():
        for p in module.parameters():
            n = p.numel()
            p.copy_(flat[offset: offset + n].view_as(p).to(p.dtype))
            offset += n


class SWAD(nn.Module, Learner):
    def __init__(self, algorithm: nn.Module, hparams: dict[str, Any]):
        super().__init__()
        self.inner = algorithm
        self.n_converge = int(hparams["swad_n_converge"])
        self.n_tolerance = int(hparams["swad_n_tolerance"])
        self.tolerance_ratio = float(hparams["swad_tolerance_ratio"])
        size = _flat(algorithm).numel()
        k = max(self.n_converge, self.n_tolerance)
        self.register_buffer("segment", torch.zeros(size))
        self.register_buffer("queue", torch.zeros(k, size))
        self.register_buffer("final", torch.zeros(size))
        self.meta: dict[str, Any] = {"segment": {"n": 0, "start": -1, "end": -1}, "queue": [],
                                     "final": {"n": 0, "start": -1, "end": -1}, "converge_step": None,
                                     "threshold": None, "dead_valley": False}
        self.stop_training = False

    # -- the learner interface: the wrapped algorithm trains, SWAD watches
    def optimizers(self):
        return self.inner.optimizers()

    def update(self, minibatches):
        info = self.inner.update(minibatches)
        self._average_into("segment", _flat(self.inner))
        return info

    def predict(self, x):
        return self.inner.predict(x)

    def checkpoint_extra(self):
        return {"swad": self.meta}

    def load_extra(self, extra):
        if "swad" in extra:
            self.meta = extra["swad"]
            self.stop_training = bool(self.meta["dead_valley"])

    @staticmethod
    def _average(buf: torch.Tensor, meta: dict[str, Any], flat: torch.Tensor, start: int, end: int) -> None:
        """AveragedModel.update_parameters: copy at n = 0, else p + (q - p) / (n + 1); start/end steps kept."""
        with torch.no_grad():
            if meta["n"] == 0:
                buf.copy_(flat)
            else:  # the same three operations in place: no model-sized temporaries but one
                buf.add_(torch.sub(flat, buf).div_(meta["n"] + 1))
        meta["n"] += 1
        if meta["n"] == 1:
            meta["start"] = start
        meta["end"] = end

    def _average_into(self, name: str, flat: torch.Tensor, start: int | None = None, end: int | None = None) -> None:
        step = self.current_step
        self._average(getattr(self, name), self.meta[name], flat, step if start is None else start,
                      step if end is None else end)

    # -- LossValley
    def _segments(self) -> list[dict[str, Any]]:
        return self.meta["queue"]

    def _segment_vec(self, i: int) -> torch.Tensor:
        return self.queue[self._segments()[i]["slot"]]

    def _converge_q(self) -> list[int]:
        n = len(self._segments())
        return list(range(max(0, n - self.n_converge), n))

    def _smooth_q(self) -> list[int]:
        n = len(self._segments())
        return list(range(max(0, n - self.n_tolerance), n))

    def _freeze_segment(self, val_loss: float) -> None:
        segs = self._segments()
        k = self.queue.shape[0]
        if len(segs) == k:  # the deque drops its oldest
            slot = segs.pop(0)["slot"]
        else:
            used = {s["slot"] for s in segs}
            slot = next(i for i in range(k) if i not in used)
        with torch.no_grad():
            self.queue[slot].copy_(self.segment)
        seg = self.meta["segment"]
        segs.append({"slot": slot, "start": seg["start"], "end": seg["end"], "loss": float(val_loss)})
        self.meta["segment"] = {"n": 0, "start": -1, "end": -1}

    def _smooth_loss(self, idx: int) -> float:
        smooth = self._smooth_q()
        return min(self._segments()[i]["loss"] for i in smooth[idx:])

    def _add_to_final(self, i: int) -> None:
        s = self._segments()[i]
        self._average_into("final", self._segment_vec(i), s["start"], s["end"])

    def evaluated(self, step: int, val_loss: float) -> None:
        """LossValley.update_and_evaluate, then the segment restarts (SWAD's train loop)."""
        meta = self.meta
        if meta["dead_valley"]:
            return
        self._freeze_segment(val_loss)
        segs = self._segments()
        if meta["converge_step"] is None:
            conv = self._converge_q()
            if len(conv) < self.n_converge:
                return
            losses = [segs[i]["loss"] for i in conv]
            min_idx = int(np.argmin(losses))
            if min_idx == 0:
                meta["converge_step"] = segs[conv[0]]["end"]
                # final_model = AveragedModel(until-min segment): n_averaged starts at 0
                self.meta["final"] = {"n": 0, "start": segs[conv[0]]["start"], "end": segs[conv[0]]["end"]}
                with torch.no_grad():
                    self.final.copy_(self._segment_vec(conv[0]))
                meta["threshold"] = float(np.mean(losses)) * (1.0 + self.tolerance_ratio)
                if self.n_tolerance < self.n_converge:
                    for i in range(self.n_converge - self.n_tolerance):
                        self._add_to_final(conv[1 + i])
                elif self.n_tolerance > self.n_converge:
                    converge_idx = self.n_tolerance - self.n_converge
                    q = self._smooth_q()[: converge_idx + 1]
                    start_idx = 0
                    for i in reversed(range(len(q))):
                        if segs[q[i]]["loss"] > meta["threshold"]:
                            start_idx = i + 1
                            break
                    for i in q[start_idx + 1:]:
                        self._add_to_final(i)
            return
        smooth = self._smooth_q()
        if segs[smooth[0]]["end"] < meta["converge_step"]:
            return
        # converged -> loss valley
        if self._smooth_loss(0) > meta["threshold"]:
            meta["dead_valley"] = True
            self.stop_training = True
            return
        self._add_to_final(smooth[0])

    def _final(self) -> tuple[torch.Tensor, dict[str, Any]]:
        """LossValley.get_final_model, on copies (asking twice gives the same answer): the averaged weights,
        or the last segment's if the run never converged."""
        meta, segs = self.meta, self._segments()
        if meta["converge_step"] is None:
            if not segs:
                return _flat(self.inner), {"start": self.current_step, "end": self.current_step}
            return self._segment_vec(len(segs) - 1).clone(), {"start": segs[-1]["start"], "end": segs[-1]["end"]}
        final, fmeta = self.final.clone(), dict(meta["final"])
        if not meta["dead_valley"]:
            smooth = self._smooth_q()[1:]  # smooth_Q.popleft()
            while smooth:
                if min(segs[i]["loss"] for i in smooth) > meta["threshold"]:
                    break
                i = smooth.pop(0)
                self._average(final, fmeta, self._segment_vec(i), segs[i]["start"], segs[i]["end"])
        return final, fmeta

    def final_weights(self) -> torch.Tensor:
        return self._final()[0]

    def final_range(self) -> list[int]:
        """The first and last step whose weights the final model averages."""
        meta = self._final()[1]
        return [meta["start"], meta["end"]]

    def averaged_model(self) -> nn.Module:
        """A copy of the algorithm carrying the final averaged weights (buffers of the last step)."""
        import copy

        model = copy.deepcopy(self.inner)
        _unflat(model, self.final_weights())
        return model


def update_bn(model: nn.Module, stream, device) -> None:
    """swa_utils.update_bn: BatchNorm statistics re-estimated with a cumulative average over the batches."""
    momenta = {}
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean = torch.zeros_like(module.running_mean)
            module.running_var = torch.ones_like(module.running_var)
            momenta[module] = module.momentum
    if not momenta:
        return
    was_training = model.training
    model.train()
    for module in momenta:
        module.momentum = None
        module.num_batches_tracked *= 0
    with torch.no_grad():
        for minibatches in stream:
            x = torch.cat([x for x, _ in minibatches]).to(device)
            model.predict(x)
    for module in momenta:
        module.momentum = momenta[module]
    model.train(was_training)
