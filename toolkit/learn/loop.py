"""The one training loop, used by pretrain, dg and cl.

A `Learner` (an nn.Module: a DomainBed algorithm, a supervised classifier, a CL strategy's network)
implements `update(minibatches) -> dict of floats` as DomainBed's algorithms do, and calls
`self.optimize(loss, optimizer)` where DomainBed writes `zero_grad(); backward(); step()`. The loop:

- runs steps [start, total) through accelerate: the process group under `accelerate launch`, the
  device, autocast for bf16/fp16, and the fp16 gradient scaler. Gradients are averaged across processes
  inside `optimize` (all-reduce) rather than by wrapping the model in DDP, because DomainBed-style
  algorithms call their sub-networks directly; buffers (BatchNorm statistics) follow process 0, as
  DDP's broadcast_buffers does. Only the main process writes.
- makes every random draw a function of (seed, step): the global torch / numpy / random generators are
  re-seeded at each step (dropout, Mixup's Beta draws, random pairings), and batches come from
  `loaders` by step. So a resumed run computes what the uninterrupted one computes (same device and
  thread count), without saving RNG states.
- guards against non-finite steps: a step whose loss or gradients are not finite is skipped and the
  buffers its forward pass touched (BatchNorm statistics) are put back; fp16 leaves this to its
  gradient scaler. Most of a checkpoint interval skipped stops the run ("training diverged").
- never waits for the GPU inside a step. On CUDA the guard decides on the device: optimizers are fused
  (`optimizer_kwargs`) and skip a step through their `found_inf` input, as GradScaler makes them do, and
  the BatchNorm statistics are put back with `torch.where`. Losses stay on the device too, summed there;
  the host reads them at checkpoints and, for the progress bar, about once a second. On a CPU the same
  checks run eagerly (there is nothing to wait for).
- at each checkpoint step, evaluates (the caller's function), then writes weights, optimizer states
  and progress (step, records) into one folder that is renamed into place: checkpoint and progress
  are one atomic step, so a kill at any point resumes from a consistent state.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ..core.cache import derive_seed
from ..core.errors import AugurError
from ..core.faults import kill_point
from ..core.files import fsync_dir, io_errors, publish_dir, save_safetensors, write_json

CKPT_PREFIX = "step-"


def sync_free() -> bool:
    """Whether steps take the path that never waits for the device: on CUDA, or forced on a CPU with
    AUGUR_SYNC_FREE=1 (what the device audit checks, learn/audit.py)."""
    import os

    from ..core.device import cuda_available

    return cuda_available() or os.environ.get("AUGUR_SYNC_FREE", "") not in ("", "0")


def optimizer_kwargs() -> dict[str, Any]:
    """Keyword arguments for every optimizer a learner makes (Adam and AdamW): torch's fused kernel, on every
    device. The update rule is torch's own, term for term; the kernel reads each tensor once instead of once
    per term, which on a CPU made a resnet18 step at 32 px 1.9x faster (opt.step 40 -> 7 ms; measured on the
    2-core build machine, 2026-12-07), and on CUDA it is one kernel per step that also takes the device-side
    skip of a non-finite step (`found_inf`). Rounding differs from the per-tensor loop, so runs of older
    commits (which used it on a CPU) are reproduced to within a reseeded run's spread, not digit for digit."""
    return {"fused": True}


class Learner:
    """Mixin for nn.Modules trained by `run` (see the module docstring)."""

    _trainer: "Trainer | None" = None
    current_step: int = 0  # set by the loop before each update
    stop_training: bool = False  # a learner may end training early (SWAD's dead valley)

    def optimizers(self) -> dict[str, Any]:
        """Named optimizers (their states are checkpointed)."""
        return {"optimizer": self.optimizer}  # type: ignore[attr-defined]

    def optimize(self, loss, *optimizers, retain_graph: bool = False):
        """zero_grad, backward, (all-reduce), step. Returns whether the step was taken: a bool on a CPU, a
        0-dim bool tensor on the device on CUDA (reading it would wait for the GPU: keep it there)."""
        return self._trainer.optimize(loss, optimizers, retain_graph=retain_graph)

    def update(self, minibatches: list[tuple[Any, Any]]) -> dict[str, Any]:
        """One step; returns the values to log (detached tensors or floats: the loop averages them)."""
        raise NotImplementedError

    def predict(self, x):
        raise NotImplementedError

    def checkpoint_extra(self) -> dict[str, Any]:
        """JSON-able state beyond tensors and optimizers (e.g. a CL memory's item references)."""
        return {}

    def load_extra(self, extra: dict[str, Any]) -> None:
        pass


class Trainer:
    """zero_grad, backward, (all-reduce), step, with the non-finite guard of the module docstring. How a step
    is applied is chosen once, here: fp16's gradient scaler (it skips non-finite steps itself), a decision
    kept on the device (CUDA: never waits), or an eager one (a CPU: the checks before it already returned)."""

    def __init__(self, precision: str, accelerator):
        import torch

        self.precision = precision
        self.acc = accelerator
        self.guard = precision != "fp16"  # fp16: the gradient scaler skips non-finite steps itself
        self.check_grads = precision == "bf16" or accelerator.num_processes > 1
        self.on_device = accelerator.device.type == "cuda" or sync_free()  # decide on the device, never wait
        self._true = torch.ones((), dtype=torch.bool, device=accelerator.device)
        self.step_ok: Any = True
        self._apply = (self._apply_scaled if accelerator.scaler is not None else
                       self._apply_on_device if self.on_device and self.guard else self._apply_eager)

    def begin_step(self) -> None:
        self.step_ok = self._true if self.on_device else True

    def optimize(self, loss, optimizers: Sequence[Any], retain_graph: bool = False):
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        ok = self._loss_ok(loss)
        if ok is False:
            self.step_ok = False
            return False
        scaler = self.acc.scaler
        (scaler.scale(loss) if scaler is not None else loss).backward(retain_graph=retain_graph)
        params = [p for opt in optimizers for g in opt.param_groups for p in g["params"] if p.grad is not None]
        if self.acc.num_processes > 1 and params:
            _all_reduce_mean([p.grad for p in params], self.acc.num_processes)
        if self.guard and self.check_grads:
            ok = self._grads_ok(params, ok, optimizers)
            if ok is False:
                return False
        return self._apply(optimizers, ok)

    def _loss_ok(self, loss):
        """False for a non-finite loss found eagerly; on the device, the finiteness as a 0-dim tensor; else None."""
        import torch

        if not self.guard:
            return None
        finite = torch.isfinite(loss.detach()).all()
        if self.on_device:
            return finite
        return None if bool(finite) else False

    def _grads_ok(self, params, ok, optimizers):
        finite = _grads_finite(params)
        if self.on_device:
            return ok & finite
        if not bool(finite):
            self.step_ok = False
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            return False
        return ok

    def _apply_scaled(self, optimizers, ok) -> bool:
        for opt in optimizers:
            self.acc.scaler.step(opt)
        return True

    def _apply_eager(self, optimizers, ok) -> bool:
        for opt in optimizers:
            opt.step()
        return True

    def _apply_on_device(self, optimizers, ok):
        for opt in optimizers:
            if opt.defaults.get("fused"):
                # Fused optimizers skip the whole update (moments, step count) where found_inf is 1.
                opt.found_inf = (~ok).float()
                try:
                    opt.step()
                finally:
                    del opt.found_inf
            elif bool(ok):  # an optimizer made without optimizer_kwargs(): this one waits for the GPU
                opt.step()
        self.step_ok = self.step_ok & ok
        return ok


def _all_reduce_mean(grads: list, world: int) -> None:
    import torch
    import torch.distributed as dist

    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset: offset + n].view_as(g))
        offset += n


def _grads_finite(params):
    """A 0-dim bool tensor on the gradients' device (nothing is read back here)."""
    import torch

    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return True
    # The largest |g| of every tensor in one multi-tensor kernel: NaN and inf survive a max, and unlike a
    # sum of squares, sane gradients cannot overflow into a false alarm.
    return torch.isfinite(torch.stack(torch._foreach_norm(grads, float("inf")))).all()


def seed_step(seed: int, step: int) -> None:
    """Every global generator re-seeded from (seed, step): see the module docstring."""
    import torch

    s = derive_seed(seed, "step-rng", step)
    torch.manual_seed(s)
    np.random.seed(s)
    random.seed(s)


def accelerator_for(precision: str):
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    # accelerate keeps one process-wide state and refuses a second precision in the same process (a
    # recipe's stages, a library caller): each run is its own. The process group is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision="no" if precision == "fp32" else precision)


def latest_checkpoint(ckpt: Path) -> Path | None:
    done = sorted(p for p in ckpt.glob(f"{CKPT_PREFIX}*") if p.is_dir() and (p / "progress.json").is_file())
    return done[-1] if done else None


def write_state(final: Path, learner, progress: dict[str, Any], optimizers: dict[str, Any] | None = None) -> None:
    """A learner's whole state as one folder renamed into place: weights and buffers (model.safetensors),
    optimizer states (optimizers.pt, when given) and progress with the learner's JSON extra (progress.json).
    There is no moment at which half of it is there. The training loop's checkpoints and the CL stage's
    finished tasks are written by it."""
    import torch

    final = Path(final)
    tmp = final.parent / f".{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # clone: buffers may be views of one flat tensor (see _flatten_buffers), which safetensors refuses
    state = {k: v.detach().cpu().clone() for k, v in learner.state_dict().items()}
    save_safetensors(state, tmp / "model.safetensors")
    if optimizers is not None:
        with io_errors(tmp / "optimizers.pt"):
            torch.save(optimizers, tmp / "optimizers.pt")
    (tmp / "progress.json").write_text(json.dumps({**progress, "extra": learner.checkpoint_extra()}),
                                       encoding="utf-8")
    publish_dir(tmp, final)


def read_state(path: Path, learner, device, optimizers: dict[str, Any] | None = None, strict_keys: bool = True
               ) -> tuple[dict[str, Any], dict[str, Any]]:
    """What write_state wrote, loaded into `learner` (and its named optimizers); (progress, optimizer states)."""
    import torch
    from safetensors.torch import load_file

    state = load_file(str(path / "model.safetensors"), device=str(device))
    missing, unexpected = learner.load_state_dict(state, strict=False)
    if unexpected and strict_keys:
        raise AugurError(f"{path}: the checkpoint does not fit this model ({len(unexpected)} unexpected keys)")
    optim = (torch.load(path / "optimizers.pt", map_location=device, weights_only=True)
             if (path / "optimizers.pt").is_file() else {})
    for name, opt in (optimizers or {}).items():
        if name in optim:
            opt.load_state_dict(optim[name])
    progress = json.loads((path / "progress.json").read_text(encoding="utf-8"))
    learner.load_extra(progress.get("extra", {}))
    return progress, optim


def _save(ckpt: Path, step: int, learner, acc, progress: dict[str, Any]) -> None:
    final = ckpt / f"{CKPT_PREFIX}{step:09d}"
    optim = {name: opt.state_dict() for name, opt in learner.optimizers().items()}
    if acc.scaler is not None:
        optim["_scaler"] = acc.scaler.state_dict()
    write_state(final, learner, progress, optim)
    kill_point("loop.after_checkpoint")
    for old in ckpt.glob(f"{CKPT_PREFIX}*"):
        if old != final and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    fsync_dir(ckpt)


def _load(path: Path, learner, acc) -> dict[str, Any]:
    progress, optim = read_state(path, learner, acc.device, learner.optimizers())
    if acc.scaler is not None and "_scaler" in optim:
        acc.scaler.load_state_dict(optim["_scaler"])
    return progress


def run(learner, batches: Callable[[int, int], Iterable[list]], *, total_steps: int,
        is_checkpoint: Callable[[int], bool], ckpt: Path, seed: int, precision: str = "fp32",
        evaluate: Callable[[Any], dict[str, Any]] | None = None, progress: bool = True, desc: str = "train",
        on_checkpoint: Callable[[Any, int, dict[str, Any]], None] | None = None,
        save_last: bool = True) -> list[dict[str, Any]]:
    """Train `learner` for steps [0, total_steps), resuming from the last checkpoint under `ckpt`.

    `batches(start, stop)` yields, for each step in [start, stop), the step's minibatches (a list of
    (x, y) tensors, one per environment). Returns the records written at checkpoint steps: the step,
    the mean of each value `update` returned since the last checkpoint, skipped steps, images/s, and
    whatever `evaluate(learner)` measured. `save_last=False`: the last step is recorded but not saved, for a
    caller that saves the learner's whole state itself right after (CL's finished task); a kill in between
    resumes from the checkpoint before it and retrains to the same weights.
    """
    if precision not in ("fp32", "bf16", "fp16"):  # the stage resolved it once (LoopSettings.train_precision)
        raise ValueError(f"loop.run takes a resolved precision (fp32, bf16, fp16), got {precision!r}")
    training = _Training(learner, Path(ckpt), total_steps, precision, evaluate, on_checkpoint, save_last)
    return training.run(batches, is_checkpoint, seed, progress, desc)


class _Training:
    """One call of `run`: the accelerator and trainer wired into the learner, then steps and checkpoints."""

    def __init__(self, learner, ckpt: Path, total_steps: int, precision: str, evaluate, on_checkpoint,
                 save_last: bool):
        self.learner, self.ckpt, self.total, self.precision = learner, ckpt, total_steps, precision
        self.evaluate, self.on_checkpoint, self.save_last = evaluate, on_checkpoint, save_last
        self.acc = accelerator_for(precision)
        self.trainer = Trainer(precision, self.acc)
        # SWAD and the algorithm it wraps are both Learners: they share the trainer and the step count
        self.learners = [m for m in learner.modules() if isinstance(m, Learner)]
        for m in self.learners:
            m._trainer = self.trainer
        learner.to(self.acc.device)
        self.main = self.acc.is_main_process
        self.records: list[dict[str, Any]] = []

    def resume(self) -> int:
        """The first step to run: after the last checkpoint (its records kept), or 0."""
        start = 0
        last = latest_checkpoint(self.ckpt) if self.ckpt.is_dir() else None
        if last is not None:
            state = _load(last, self.learner, self.acc)
            start, self.records = state["step"] + 1, state["records"]
            if state.get("stopped"):
                start = self.total
        self.acc.wait_for_everyone()
        return start

    def _batchnorm_buffers(self) -> list:
        """What a skipped step must put back, and what processes must agree on: the statistics a forward pass in
        training mode changes (BatchNorm's). Memories and accumulators are the learner's own business."""
        import torch

        buffers = [b for m in self.learner.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                   for b in m.buffers() if b.is_floating_point()]
        if self.trainer.on_device and buffers:
            # One tensor holding them all (each buffer a view of it): saving and restoring them is then two
            # kernels a step instead of three per buffer, which on a small network is most of a GPU step.
            buffers = [_flatten_buffers(self.learner)]
        return buffers

    def run(self, batches, is_checkpoint, seed: int, progress: bool, desc: str) -> list[dict[str, Any]]:
        from ..core.progress import progress_bar

        start = self.resume()
        self.buffers = self._batchnorm_buffers()
        self.log, self.t0, shown = _Log(self.acc.device), time.perf_counter(), 0.0
        self.bar = progress_bar(self.total, desc, unit="step", initial=start, disable=not progress or not self.main)
        stream = iter(batches(start, self.total))
        for step in range(start, self.total):
            if not self._step(step, stream, seed):
                break
            self.bar.update(1)
            now = time.perf_counter()
            if self.bar.disable is False and now - shown >= 1.0:  # reading the losses waits for the GPU: once a second
                shown = now
                self.bar.set_postfix(img_s=f"{self.log.images / max(now - self.t0, 1e-9):.0f}",
                                     **{k: f"{v:.3f}" for k, v in list(self.log.latest().items())[:2]})
            if (is_checkpoint(step) or step == self.total - 1) and self._checkpoint(step):
                break
        self.bar.close()
        self.learner.eval()
        return self.records

    def _step(self, step: int, stream, seed: int) -> bool:
        """One update (False when the batches ran out): seeded by (seed, step); a non-finite step is skipped and
        the BatchNorm statistics its forward pass moved are put back."""
        import torch

        from . import audit

        acc, trainer, buffers = self.acc, self.trainer, self.buffers
        with _step_audit(audit, self.learner) as checker:
            try:
                minibatches = next(stream)
            except StopIteration:
                return False
            seed_step(seed, step)
            for m in self.learners:
                m.current_step = step
            minibatches = [(x.to(acc.device, non_blocking=True), y.to(acc.device, non_blocking=True))
                           for x, y in minibatches]
            if checker is not None:
                checker.mark(*(t for mb in minibatches for t in mb))
            if not self.learner.training:  # after an evaluation (a module walk every step costs a small GPU step)
                self.learner.train()
            saved = [b.clone() for b in buffers] if trainer.guard else []
            trainer.begin_step()
            with acc.autocast():
                info = self.learner.update(minibatches)
            kill_point("loop.step")
            if acc.scaler is not None:
                acc.scaler.update()
            ok = trainer.step_ok
            if saved:
                if trainer.on_device:
                    for b, old in zip(buffers, saved):
                        b.copy_(torch.where(ok, b, old))
                elif not ok:
                    for b, old in zip(buffers, saved):
                        b.copy_(old)
            self.log.add(info, ok)
            if acc.num_processes > 1:
                import torch.distributed as dist

                for b in buffers:
                    dist.broadcast(b, 0)
            self.log.images += sum(len(y) for _, y in minibatches) * acc.num_processes
        return True

    def _checkpoint(self, step: int) -> bool:
        """The record of the steps since the last checkpoint (and the evaluation), saved with the state; whether
        the learner asked to stop."""
        import torch

        means, skipped = self.log.read()
        if skipped and self.main:
            self.bar.write(f"warning: {skipped} step(s) before step {step} had a non-finite loss or gradient "
                           f"({self.precision}) and were skipped", file=sys.stderr)
        if skipped > self.log.steps // 2:
            self.bar.close()
            raise AugurError(f"training diverged: {skipped} of {self.log.steps} steps before step {step} had "
                             f"a non-finite loss or gradient ({self.precision}); try a lower learning rate, or "
                             "--precision fp32 (docs/verification.md on bf16 on a CPU). The last checkpoint is kept")
        record = {"step": step, **means, "skipped_steps": skipped, "images": self.log.images,
                  "images_per_second": self.log.images / max(time.perf_counter() - self.t0, 1e-9)}
        if self.evaluate is not None:
            self.learner.eval()
            with torch.inference_mode(), self.acc.autocast():
                measured = self.evaluate(self.learner)
            for k in measured:  # the training means keep their place beside an evaluation's same name
                if k in means:
                    record[f"train_{k}"] = record.pop(k)
            record.update(measured)
        if self.on_checkpoint is not None:
            self.on_checkpoint(self.learner, step, record)
        self.records.append(record)
        stop = bool(getattr(self.learner, "stop_training", False))
        if self.main and (self.save_last or (step != self.total - 1 and not stop)):
            _save(self.ckpt, step, self.learner, self.acc, {"step": step, "records": self.records, "stopped": stop})
        self.acc.wait_for_everyone()
        self.log, self.t0 = _Log(self.acc.device), time.perf_counter()
        return stop


def _flatten_buffers(learner):
    """Make every floating-point BatchNorm buffer of `learner` a view of one new contiguous tensor; return it."""
    import torch

    owners = [(m, name, b) for m in learner.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
              for name, b in m._buffers.items() if b is not None and b.is_floating_point()]
    flat = torch.cat([b.detach().reshape(-1) for _, _, b in owners])
    offset = 0
    for m, name, b in owners:
        m._buffers[name] = flat[offset: offset + b.numel()].view_as(b)
        offset += b.numel()
    return flat


def _step_audit(audit, learner):
    """The device audit around one step when AUGUR_AUDIT is set (learn/audit.py), else nothing."""
    from contextlib import nullcontext

    if not audit.enabled():
        return nullcontext()
    return audit.DeviceAudit([*learner.parameters(), *learner.buffers()], strict=True)


class _Log:
    """What `update` returned, summed where it was computed (on the GPU: no wait per step) over the steps
    that were taken; read back at checkpoints. Non-finite values are left out, as skipped steps are."""

    def __init__(self, device):
        self.device = device
        self.sums: dict[str, Any] = {}
        self.counts: dict[str, Any] = {}
        self.last: dict[str, Any] = {}
        self.skipped: Any = 0
        self.steps = 0
        self.images = 0

    def add(self, info: dict[str, Any], ok) -> None:
        import torch

        self.steps += 1
        on_device = torch.is_tensor(ok)
        self.skipped = self.skipped + (~ok if on_device else (not ok))
        for k, v in info.items():
            if v is None:
                continue
            if not torch.is_tensor(v):  # a host value (a penalty weight): summed on the host
                if on_device or (ok and math.isfinite(float(v))):
                    self.sums[k] = self.sums.get(k, 0.0) + float(v)
                    self.counts[k] = self.counts.get(k, 0) + 1
                    self.last[k] = float(v)
                continue
            v = v.detach().to(torch.float64)
            good = torch.isfinite(v) & ok if on_device else (torch.isfinite(v) & bool(ok))
            self.sums[k] = self.sums.get(k, 0.0) + torch.where(good, v, 0.0)
            self.counts[k] = self.counts.get(k, 0) + good.to(torch.int64)
            self.last[k] = v

    def latest(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.last.items()}

    def read(self) -> tuple[dict[str, float], int]:
        means = {k: float(self.sums[k] / self.counts[k]) for k in self.sums if int(self.counts[k]) > 0}
        return means, int(self.skipped)


def clear(ckpt: Path) -> None:
    """Drop a finished run's checkpoints (what it produced is saved elsewhere)."""
    shutil.rmtree(ckpt, ignore_errors=True)


def write_records(path: Path, records: list[dict[str, Any]]) -> None:
    write_json(path, records)
