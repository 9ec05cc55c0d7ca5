"""Class-incremental strategies, a registry: one class each, its typed hyper-parameters beside it.

Single head over every class, predictions restricted to the classes seen so far (the class-incremental
setting). A strategy is an nn.Module trained by the shared loop (`update`), with hooks around each
task; everything it must remember (memories, Fisher information, prototypes, ridge statistics, old
models) is a buffer, a sub-module or JSON in its checkpoint, so a run resumes exactly. Items are
(row, label) pairs: rows of the run's decoded image store (learn/images.py), on the training device;
memories keep rows. Per-step code never waits for the GPU (host-side copies of counters, column
indices computed once per task); everything a strategy computes lives on the model's device.

References, followed formula for formula:
- ncm: nearest class mean with cosine similarity to prototypes = means of raw features (SimpleCIL,
  Zhou et al. 2023; RanPAC's NCM head).
- ranpac: RanPAC (McDonnell et al., NeurIPS 2023; RanPAC/RanPAC RanPAC.py): a frozen random projection
  W ~ N(0, 1) of size d x M with ReLU, Gram matrix G += H^T H and Q += H^T Y accumulated over tasks, the
  ridge lambda chosen from 10^-8 ... 10^8 by MSE on the last 20% of the current task's (shuffled)
  training features, head W_o = solve(G + lambda I, Q)^T.
- fsa: first-session adaptation (RanPAC's first-task training, RanPAC.py `_train` / `_init_train`): on the
  first task only, RanPAC's AdaptFormer adapters, SSF or deep VPT in a frozen ViT (learn/adapters.py; or LoRA
  adapters with --lora, or every backbone weight) train with a cosine-similarity head (inc_net.py `CosineLinear`, sigma
  learnt) by SGD (momentum 0.9, lr 0.01, weight decay 5e-4) with the rate annealed to 0 by a cosine over the
  epochs (`CosineAnnealingLR(T_max=tuned_epoch, eta_min=min_lr=0)`, stepped per epoch); then everything is
  frozen under an NCM or RanPAC head. Fine-tuning every weight keeps the run's AdamW and a linear head.
- lwf: PyCIL's models/lwf.py (G-U-N/PyCIL@87cc411, lines 145-166 and 202-205): cross-entropy on the
  new classes' logits only, plus lamda = 3 times PyCIL's `_KD_loss` at T = 2 on the old classes; the
  variant `loss=kl` is cross-entropy over every seen class + alpha * KL * T^2 (Hinton's scaling).
- icarl: Rebuffi et al. 2017: herding memory, sigmoid binary cross-entropy with the old model's sigmoid
  outputs as old-class targets, nearest-mean-of-exemplars classification; `loss=ce` is PyCIL's
  models/icarl.py (lines 158-167): cross-entropy + `_KD_loss` at T = 2, unweighted; `loss=kl` the
  cross-entropy + alpha * KL * T^2 form.
- ewc: online EWC as Mammoth's models/ewc_on.py (aimagelab/mammoth@e75a491, `end_task`, `penalty`,
  `get_penalty_grads`): per training sample of the task, the squared gradient of log p(y|x) weighted by
  p(y|x), summed and divided by len(train_loader) * batch_size; F <- gamma F + F_task (Schwarz et al.
  2018); loss = CE + lambda * sum F (theta - theta*)^2 (Mammoth adds its gradient, 2 lambda F (theta -
  theta*), before backward). The variant `fisher=empirical` is the plain empirical Fisher (the mean of
  squared per-sample gradients) with Kirkpatrick et al.'s lambda / 2.
- der / derpp: Buzzega et al. 2020 (Mammoth der.py, derpp.py): a reservoir buffer of inputs and
  logits, alpha * MSE on the logits (+ beta * CE on buffer labels for DER++).
- gdumb: Prabhu et al. 2020: a greedy class-balanced memory; at every task a model trained from its
  initial weights on the memory alone.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ...core.cache import derive_seed
from ...core.registry import Registry
from ...learn.backbones import num_features
from ...learn.loop import Learner, optimizer_kwargs

STRATEGIES = Registry("strategy")


@dataclass
class Context:
    """What strategies need besides their network: the image store, seeds, sizes, the optimizer's settings."""

    store: Any  # learn.images.ImageStore: items are (row, label) pairs of it
    seed: int
    n_classes: int
    image_size: int
    lr: float
    weight_decay: float
    batch_size: int

    def batches(self, items: list, batch: int):
        """(normalised x, y) of `items` on the store's device, in order, without augmentation."""
        return self.store.eval_batches(np.array([r for r, _ in items], dtype=np.int64), batch)


class Net(nn.Module):
    def __init__(self, backbone: nn.Module, n_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(num_features(backbone), n_classes)

    def forward(self, x):
        return self.head(self.backbone(x))


class Strategy(nn.Module, Learner):
    """Fine-tuning on each task's data; subclasses change the data, the loss or the classifier."""

    trains = True
    about = ""

    def __init__(self, backbone: nn.Module, hp: dict[str, Any], ctx: Context):
        super().__init__()
        self.net = Net(backbone, ctx.n_classes)
        self.hp, self.ctx = hp, ctx
        self.register_buffer("seen", torch.zeros(ctx.n_classes, dtype=torch.bool))
        self.optimizer = None
        if not self.trains:
            for p in self.net.parameters():
                p.requires_grad_(False)

    @classmethod
    def resolve_hp(cls, hp: dict[str, Any], given: dict[str, Any], arch: str, lora: bool) -> dict[str, Any]:
        """The hyper-parameters as the run applies them (an `auto` decided, one that does not apply None):
        what the rows and the run's identity record. `given`: those the user set."""
        return hp

    # -- lifecycle
    def trains_on(self, task: int) -> bool:
        return self.trains

    def begin_training(self, epochs: int, steps_per_epoch: int) -> None:
        """Called before a task's training loop: its length, for a learning-rate schedule."""

    def optimizer_settings(self) -> dict[str, Any]:
        """The optimiser a trained task uses, as the rows record it."""
        return {"optimizer": "adamw", "lr": self.ctx.lr, "weight_decay": self.ctx.weight_decay}

    def begin_task(self, task: int, classes: list[int], items: list) -> None:
        self.seen[classes] = True
        # Column indices, once per task: a training step must not ask the GPU what they are (a sync).
        self.seen_cols = self.seen.nonzero().squeeze(1)
        if self.trains_on(task):
            self.optimizer = self.make_optimizer([p for p in self.net.parameters() if p.requires_grad])

    def make_optimizer(self, params: list) -> torch.optim.Optimizer:
        return torch.optim.AdamW(params, lr=self.ctx.lr, weight_decay=self.ctx.weight_decay, **optimizer_kwargs())

    def training_items(self, items: list) -> list:
        return items

    def end_task(self, task: int, classes: list[int], items: list) -> None:
        pass

    def optimizers(self):
        return {"optimizer": self.optimizer} if self.optimizer is not None else {}

    # -- training and prediction
    def masked(self, logits):
        return logits.masked_fill(~self.seen.to(logits.device), float("-inf"))

    def loss(self, outputs, y, x):
        return F.cross_entropy(self.masked(outputs), y)

    def update(self, minibatches):
        x = torch.cat([x for x, _ in minibatches])
        y = torch.cat([y for _, y in minibatches])
        loss = self.loss(self.net(x), y, x)
        self.optimize(loss, self.optimizer)
        return {"loss": loss.detach()}

    def predict(self, x):
        return self.masked(self.net(x))

    # -- helpers
    def features(self, items: list, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw backbone features and labels of `items` (no augmentation, eval mode), on the model's device."""
        self.net.eval()
        feats, labels = [], []
        with torch.no_grad():
            for x, y in self.ctx.batches(items, batch):
                feats.append(self.net.backbone(x).float())
                labels.append(y)
        return torch.cat(feats), torch.cat(labels)


@STRATEGIES.register("naive")
class Naive(Strategy):
    about = "fine-tuning on each task's data alone: the lower bound"


# ----------------------------------------------------------------------------- exemplar memories
class _Memory(Strategy):
    """A fixed-size exemplar memory shared by the seen classes, rebalanced after each task."""


    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.memory: list[tuple[Any, int]] = []

    def training_items(self, items):
        return list(items) + list(self.memory)

    def end_task(self, task, classes, items):
        super().end_task(task, classes, items)
        seen = int(self.seen.sum())
        per_class = max(1, self.hp["memory"] // seen)
        kept: dict[int, list] = {}
        for x, y in self.memory:
            kept.setdefault(y, []).append((x, y))
        for c in classes:
            kept[c] = self.select([(x, y) for x, y in items if y == c], per_class, c)
        self.memory = [it for c in sorted(kept) for it in kept[c][:per_class]]

    def select(self, items, k: int, c: int):
        if self.hp["selection"] == "herding":
            return herding(self, items, k)
        rng = np.random.RandomState(derive_seed(self.ctx.seed, "memory", c))
        return [items[i] for i in sorted(rng.choice(len(items), size=min(k, len(items)), replace=False))]

    def checkpoint_extra(self):
        return {"memory": [[int(r), int(y)] for r, y in self.memory]}

    def load_extra(self, extra):
        self.memory = [(int(r), int(y)) for r, y in extra.get("memory", [])]


def herding(strategy: Strategy, items, k: int):
    """iCaRL's herding on L2-normalised features: greedily pick samples whose running mean tracks the class mean."""
    f, _ = strategy.features(items)
    f = F.normalize(f, dim=1).cpu()  # once per class and task; the greedy loop is k tiny steps on the host
    mu = f.mean(0)
    chosen: list[int] = []
    acc = torch.zeros_like(mu)
    for i in range(min(k, len(items))):
        scores = ((mu - (acc + f) / (i + 1)) ** 2).sum(1)
        if chosen:
            scores[chosen] = float("inf")
        j = int(scores.argmin())
        chosen.append(j)
        acc += f[j]
    return [items[j] for j in chosen]


@STRATEGIES.register("replay")
class Replay(_Memory):
    about = "experience replay: each task trains on its data plus the exemplar memory"


# ----------------------------------------------------------------------------- distillation
class _OldModel(Strategy):
    """Keeps a frozen copy of the network from the end of the last task."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.old = copy.deepcopy(self.net)
        for p in self.old.parameters():
            p.requires_grad_(False)
        self.register_buffer("old_seen", torch.zeros_like(self.seen))
        self._has_old = False  # a host-side copy of old_seen.any(): asked every step, it must not sync a GPU

    def begin_task(self, task, classes, items):
        self._has_old = bool(self.old_seen.any())  # once per task (also right after a resume's load)
        self.old_cols = self.old_seen.nonzero().squeeze(1)
        super().begin_task(task, classes, items)
        new = self.seen & ~self.old_seen
        self.new_cols = new.nonzero().squeeze(1)
        self.new_position = torch.cumsum(new.long(), 0) - 1  # a class's position among the new columns

    @property
    def has_old(self) -> bool:
        return self._has_old


    def end_task(self, task, classes, items):
        super().end_task(task, classes, items)
        self.old.load_state_dict(self.net.state_dict())
        self.old.eval()
        self.old_seen.copy_(self.seen)
        self._has_old = True

    def old_logits(self, x):
        self.old.eval()
        with torch.no_grad():
            return self.old(x)


def _kd_kl(outputs, targets, cols, T):
    """KL(softmax(targets / T) || softmax(outputs / T)) * T^2 on the columns `cols` (Hinton's scaling)."""
    return F.kl_div(F.log_softmax(outputs[:, cols] / T, 1), F.softmax(targets[:, cols] / T, 1),
                    reduction="batchmean") * T * T


def pycil_kd(pred, soft, T):
    """PyCIL's `_KD_loss` (models/lwf.py and icarl.py, lines 202-205), line for line: the cross-entropy of
    the softened old outputs against the softened new ones, summed and divided by the batch size."""
    pred = torch.log_softmax(pred / T, dim=1)
    soft = torch.softmax(soft / T, dim=1)
    return -1 * torch.mul(soft, pred).sum() / pred.shape[0]


@STRATEGIES.register("lwf")
class LwF(_OldModel):
    about = ("Learning without Forgetting as PyCIL: CE on the new classes + 3 x KD(T=2) on the old ones "
             "(loss=kl: CE on every seen class + alpha KL T^2)")

    def loss(self, outputs, y, x):
        T, alpha = self.hp["temperature"], self.hp["alpha"]
        if self.hp["loss"] == "kl":
            ce = F.cross_entropy(self.masked(outputs), y)
            if not self.has_old:
                return ce
            return ce + alpha * _kd_kl(outputs, self.old_logits(x), self.old_cols, T)
        # PyCIL's classes are renumbered so that the new ones are the last columns: the target is y's
        # position among the new columns (fake_targets = targets - known_classes).
        ce = F.cross_entropy(outputs[:, self.new_cols], self.new_position[y])
        if not self.has_old:
            return ce  # the first task: PyCIL's _init_train, CE on all (= the new) classes
        old = self.old_cols
        return ce + alpha * pycil_kd(outputs[:, old], self.old_logits(x)[:, old], T)


@STRATEGIES.register("icarl")
class ICaRL(_Memory, _OldModel):
    about = ("iCaRL: herding memory, sigmoid BCE with the old model's outputs as old-class targets, "
             "nearest-mean-of-exemplars classification (loss=ce: PyCIL's CE + KD; loss=kl: CE + alpha KL T^2)")

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.hp = {**self.hp, "selection": "herding"}
        d = num_features(self.net.backbone)
        self.register_buffer("means", torch.zeros(self.ctx.n_classes, d))

    def loss(self, outputs, y, x):
        cols = self.seen_cols
        if self.hp["loss"] in ("ce", "kl"):
            ce = F.cross_entropy(self.masked(outputs), y)
            if not self.has_old:
                return ce
            old, T = self.old_cols, self.hp["temperature"]
            if self.hp["loss"] == "kl":
                return ce + self.hp["alpha"] * _kd_kl(outputs, self.old_logits(x), old, T)
            return ce + self.hp["alpha"] * pycil_kd(outputs[:, old], self.old_logits(x)[:, old], T)
        targets = F.one_hot(y, self.ctx.n_classes).float()
        if self.has_old:
            old = self.old_cols
            targets[:, old] = torch.sigmoid(self.old_logits(x)[:, old]).to(targets.dtype)
        return F.binary_cross_entropy_with_logits(outputs[:, cols].float(), targets[:, cols])

    def end_task(self, task, classes, items):
        super().end_task(task, classes, items)
        f, y = self.features(self.memory)
        f = F.normalize(f, dim=1)
        means = torch.zeros_like(self.means)
        for c in y.unique().tolist():
            means[c] = F.normalize(f[y == c].mean(0), dim=0)
        self.means.copy_(means)

    def predict(self, x):
        """Nearest mean of exemplars: cosine similarity of the normalised feature to each class's mean."""
        f = F.normalize(self.net.backbone(x).float(), dim=1)
        return self.masked(f @ self.means.T.to(f.device))


# ----------------------------------------------------------------------------- regularisation
def _buffer_name(kind: str, param: str) -> str:
    return f"{kind}__{param.replace('.', '__')}"


@STRATEGIES.register("ewc")
class EWC(Strategy):
    about = ("online EWC as Mammoth's ewc_on: lambda * sum F (theta - theta*)^2, F the p(y|x)-weighted squared "
             "gradients, F <- gamma F + F_task (fisher=empirical: the plain empirical Fisher, lambda / 2)")

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.names = [n for n, p in self.net.named_parameters() if p.requires_grad]
        for n, p in self.net.named_parameters():
            if p.requires_grad:
                self.register_buffer(_buffer_name("fisher", n), torch.zeros_like(p))
                self.register_buffer(_buffer_name("anchor", n), torch.zeros_like(p))
        self.register_buffer("has_fisher", torch.zeros((), dtype=torch.bool))
        self._has_fisher = False  # host-side copy, read every step

    def begin_task(self, task, classes, items):
        self._has_fisher = bool(self.has_fisher)
        super().begin_task(task, classes, items)

    def fisher(self, n):
        return getattr(self, _buffer_name("fisher", n))

    def anchor(self, n):
        return getattr(self, _buffer_name("anchor", n))

    def penalty(self):
        """sum F (theta - theta*)^2 over the trained parameters."""
        params = dict(self.net.named_parameters())
        return sum((self.fisher(n) * (params[n] - self.anchor(n)) ** 2).sum() for n in self.names)

    def weight(self) -> float:
        return self.hp["lambda"] / 2 if self.hp["fisher"] == "empirical" else self.hp["lambda"]

    def loss(self, outputs, y, x):
        ce = F.cross_entropy(self.masked(outputs), y)
        if not self._has_fisher:
            return ce
        return ce + self.weight() * self.penalty()

    def end_task(self, task, classes, items):
        super().end_task(task, classes, items)
        task_fisher = self.estimate_fisher(items, task)
        with torch.no_grad():
            for n, p in self.net.named_parameters():
                if n in task_fisher:
                    f = self.fisher(n)
                    f.mul_(self.hp["gamma"] if self._has_fisher else 0.0).add_(task_fisher[n])
                    self.anchor(n).copy_(p.detach())
        self.has_fisher.fill_(True)
        self._has_fisher = True

    def estimate_fisher(self, items, task: int) -> dict[str, torch.Tensor]:
        """The task's diagonal Fisher from per-sample gradients of log p(y|x) (see the `fisher` hp)."""
        from torch.func import functional_call, grad, vmap

        sample = list(items)
        if self.hp["fisher_samples"]:
            order = np.random.RandomState(derive_seed(self.ctx.seed, "fisher", task)).permutation(len(items))
            sample = [items[i] for i in order[: self.hp["fisher_samples"]]]
        net = self.net.eval()
        device = next(net.parameters()).device
        params = {n: p.detach() for n, p in net.named_parameters() if p.requires_grad}
        buffers = dict(net.named_buffers())
        seen = self.seen.to(device)

        def nll(p, x, y):
            out = functional_call(net, (p, buffers), (x.unsqueeze(0),))
            loss = F.cross_entropy(out.masked_fill(~seen, float("-inf")), y.unsqueeze(0))
            return loss, torch.exp(-loss.detach())  # and p(y|x)

        per_sample = vmap(grad(nll, has_aux=True), in_dims=(None, 0, 0))
        mammoth = self.hp["fisher"] == "mammoth"
        total = {n: torch.zeros_like(p) for n, p in params.items()}
        size = sum(p.numel() for p in params.values())
        chunk = max(1, int(2e8 // (4 * size)))  # per-sample gradients of ~200 MB at a time
        for x, y in self.ctx.batches(sample, chunk):
            g, prob = per_sample(params, x, y)
            w = prob.float() if mammoth else torch.ones_like(prob, dtype=torch.float32)
            for n in total:
                total[n] += torch.einsum("b,b...->...", w, g[n].float() ** 2)
        # Mammoth divides by len(train_loader) * batch_size: the sample count rounded up to whole batches
        bs = self.ctx.batch_size
        divisor = -(-len(sample) // bs) * bs if mammoth else len(sample)
        return {n: t / max(divisor, 1) for n, t in total.items()}


# ----------------------------------------------------------------------------- frozen-backbone heads
class NCMHead(nn.Module):
    """Prototypes = means of raw features; prediction = cosine similarity to them."""

    def __init__(self, d: int, n_classes: int):
        super().__init__()
        self.register_buffer("prototypes", torch.zeros(n_classes, d))

    def add(self, feats: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
        feats, labels = feats.to(self.prototypes.device), labels.to(self.prototypes.device)
        with torch.no_grad():
            for c in labels.unique().tolist():
                self.prototypes[c] = feats[labels == c].mean(0)
        return {}

    def logits(self, f: torch.Tensor) -> torch.Tensor:
        return F.normalize(f, dim=1) @ F.normalize(self.prototypes.to(f.device), dim=1).T


RIDGES = 10.0 ** np.arange(-8, 9)


class RidgeHead(nn.Module):
    """RanPAC's random-projection ridge head (see the module docstring)."""

    def __init__(self, d: int, n_classes: int, M: int, seed: int):
        super().__init__()
        size = M if M > 0 else d
        g = torch.Generator().manual_seed(derive_seed(seed, "ranpac-W"))
        self.register_buffer("W_rand", torch.randn(d, M, generator=g) if M > 0 else torch.zeros(0))
        self.register_buffer("G", torch.zeros(size, size))
        self.register_buffer("Q", torch.zeros(size, n_classes))
        self.register_buffer("Wo", torch.zeros(n_classes, size))
        self.n_classes = n_classes

    def project(self, f: torch.Tensor) -> torch.Tensor:
        return F.relu(f @ self.W_rand.to(f.device)) if self.W_rand.numel() else f

    @staticmethod
    def optimise_ridge_parameter(features: torch.Tensor, Y: torch.Tensor) -> float:
        num_val_samples = int(features.shape[0] * 0.8)
        losses = []
        Q_val = features[0:num_val_samples, :].T @ Y[0:num_val_samples, :]
        G_val = features[0:num_val_samples, :].T @ features[0:num_val_samples, :]
        for ridge in RIDGES:
            Wo = torch.linalg.solve(G_val + ridge * torch.eye(G_val.size(dim=0), device=G_val.device), Q_val).T
            Y_train_pred = features[num_val_samples::, :] @ Wo.T
            losses.append(F.mse_loss(Y_train_pred, Y[num_val_samples::, :]))
        return float(RIDGES[int(torch.stack(losses).argmin())])

    def add(self, feats: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
        feats, labels = feats.to(self.G.device), labels.to(self.G.device)
        H = self.project(feats)
        Y = F.one_hot(labels, self.n_classes).float()
        with torch.no_grad():
            self.Q += H.T @ Y
            self.G += H.T @ H
            ridge = self.optimise_ridge_parameter(H, Y)
            self.Wo.copy_(torch.linalg.solve(self.G + ridge * torch.eye(self.G.size(dim=0), device=self.G.device),
                                             self.Q).T)
        return {"ridge": ridge}

    def logits(self, f: torch.Tensor) -> torch.Tensor:
        return self.project(f) @ self.Wo.to(f.device).T


class _FrozenHead(Strategy):
    """A backbone that stops training (at once, or after the first task) under an NCM or ridge head."""

    head_kind = "ncm"

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        d = num_features(self.net.backbone)
        kind = self.hp.get("head", self.head_kind)
        self.head = (RidgeHead(d, self.ctx.n_classes, int(self.hp.get("M", 10000)), self.ctx.seed) if kind == "ranpac"
                     else NCMHead(d, self.ctx.n_classes))
        self.ridges: list[float] = []

    def end_task(self, task, classes, items):
        super().end_task(task, classes, items)
        if task == 0:
            for p in self.net.parameters():
                p.requires_grad_(False)
        # RanPAC shuffles the training features (its loader has shuffle=True): the ridge split is random.
        order = np.random.RandomState(derive_seed(self.ctx.seed, "head-order", task)).permutation(len(items))
        feats, labels = self.features([items[i] for i in order])
        info = self.head.add(feats, labels)
        if "ridge" in info:
            self.ridges.append(info["ridge"])

    def predict(self, x):
        return self.masked(self.head.logits(self.net.backbone(x).float()))

    def checkpoint_extra(self):
        return {"ridges": self.ridges}

    def load_extra(self, extra):
        self.ridges = list(extra.get("ridges", []))


@STRATEGIES.register("ncm", "prototype")
class NCM(_FrozenHead):
    about = "frozen backbone, nearest class mean by cosine similarity (SimpleCIL; was 'prototype')"
    trains = False
    head_kind = "ncm"


@STRATEGIES.register("ranpac")
class RanPAC(_FrozenHead):
    about = "frozen backbone, random projection + ReLU, ridge-regression head with lambda chosen on held-out data"
    trains = False
    head_kind = "ranpac"


class CosineLinear(nn.Module):
    """RanPAC's inc_net.py `CosineLinear` (nb_proxy 1, sigma learnt): sigma * cos(x, w) per class."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.sigma = nn.Parameter(torch.ones(1))
        stdv = 1.0 / np.sqrt(in_features)
        with torch.no_grad():
            self.weight.uniform_(-stdv, stdv)

    def forward(self, x):
        return self.sigma * F.linear(F.normalize(x, p=2, dim=1), F.normalize(self.weight, p=2, dim=1))


def cosine_annealed(lr: float, epoch: int, epochs: int, eta_min: float = 0.0) -> float:
    """torch's CosineAnnealingLR(T_max=epochs, eta_min) after `epoch` scheduler steps, in its closed form."""
    # a Python float: the optimiser's state (its param_groups) is checkpointed with torch.load(weights_only=True)
    return float(eta_min + (lr - eta_min) * (1 + math.cos(math.pi * epoch / epochs)) / 2)


@STRATEGIES.register("fsa")
class FSA(_FrozenHead):
    about = ("first-session adaptation (RanPAC): adapters, SSF or VPT in a frozen ViT (or LoRA, or the whole backbone) "
             "train on the first task, then everything is frozen under an NCM or RanPAC head")

    @classmethod
    def resolve_hp(cls, hp, given, arch, lora):
        from ...core.errors import AugurError
        from ...learn.backbones import is_vit

        hp = dict(hp)
        if hp["petl"] == "auto":
            hp["petl"] = "adapter" if is_vit(arch) and not lora else "none"
        petl = hp["petl"] != "none"  # adapter, ssf or vpt: RanPAC's modules in a frozen ViT
        if petl and lora:
            raise AugurError(f"fsa: --hp petl={hp['petl']} and --lora are two ways to adapt a frozen backbone; "
                             "choose one")
        if petl and not is_vit(arch):
            raise AugurError(f"fsa: RanPAC's {hp['petl']} modules sit in a vision transformer's blocks; {arch} is not "
                             "one (use --hp petl=none, with or without --lora)")
        frozen = petl or lora
        if hp["optimizer"] == "auto":
            hp["optimizer"] = "sgd" if frozen else "adamw"
        unused = {"adapter_dim": hp["petl"] != "adapter", "vpt_tokens": hp["petl"] != "vpt",
                  "sgd_lr": hp["optimizer"] != "sgd", "sgd_weight_decay": hp["optimizer"] != "sgd"}
        for key, off in unused.items():
            if off and key in given:
                raise AugurError(f"fsa: --hp {key} does not apply to this run (petl={hp['petl']}, "
                                 f"optimizer={hp['optimizer']})")
            if off:
                hp[key] = None
        if hp["head"] != "ranpac":  # a smoke run sets every strategy's M: not refused, recorded as not applied
            hp["M"] = None
        return hp

    def __init__(self, backbone, hp, ctx):
        from ...learn import adapters

        if hp["petl"] == "adapter":
            backbone = adapters.add_adapters(backbone, hp["adapter_dim"])
        elif hp["petl"] == "ssf":
            backbone = adapters.add_ssf(backbone)
        elif hp["petl"] == "vpt":
            backbone = adapters.add_vpt(backbone, hp["vpt_tokens"])
        super().__init__(backbone, hp, ctx)
        if hp["optimizer"] == "sgd":
            self.net.head = CosineLinear(num_features(self.net.backbone), ctx.n_classes)
        self.schedule = (1, 1)  # (epochs, steps per epoch) of the first session, set by begin_training

    def trains_on(self, task: int) -> bool:
        return task == 0

    def begin_training(self, epochs, steps_per_epoch):
        self.schedule = (max(1, epochs), max(1, steps_per_epoch))

    def make_optimizer(self, params):
        if self.hp["optimizer"] != "sgd":
            return super().make_optimizer(params)
        # RanPAC hands SGD every parameter of the network; the frozen ones have no gradient and do not move
        return torch.optim.SGD(params, lr=self.hp["sgd_lr"], momentum=0.9, weight_decay=self.hp["sgd_weight_decay"],
                               **optimizer_kwargs())

    def update(self, minibatches):
        if self.hp["optimizer"] == "sgd":
            epochs, spe = self.schedule
            lr = cosine_annealed(self.hp["sgd_lr"], min(self.current_step // spe, epochs), epochs)
            for g in self.optimizer.param_groups:  # from the step count alone: a resumed run takes the same rates
                g["lr"] = lr
        return super().update(minibatches)

    def optimizer_settings(self):
        if self.hp["optimizer"] == "sgd":
            return {"optimizer": "sgd (momentum 0.9, cosine annealing to 0)", "lr": self.hp["sgd_lr"],
                    "weight_decay": self.hp["sgd_weight_decay"]}
        return super().optimizer_settings()


# ----------------------------------------------------------------------------- dark experience replay
def reservoir(num_seen_examples: int, buffer_size: int) -> int:
    """Mammoth's reservoir sampling: the slot for the next example, or -1."""
    if num_seen_examples < buffer_size:
        return num_seen_examples
    rand = np.random.randint(0, num_seen_examples + 1)
    return rand if rand < buffer_size else -1


@STRATEGIES.register("der")
class DER(Strategy):
    about = "Dark Experience Replay: a reservoir of inputs and their logits, alpha * MSE to those logits"

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        m, s = self.hp["memory"], self.ctx.image_size
        self.register_buffer("buf_x", torch.zeros(m, 3, s, s))
        self.register_buffer("buf_y", torch.zeros(m, dtype=torch.long))
        self.register_buffer("buf_logits", torch.zeros(m, self.ctx.n_classes))
        self.register_buffer("num_seen", torch.zeros((), dtype=torch.long))
        self._seen: int | None = 0  # host-side copy of num_seen (the reservoir is drawn on the host)
        self.register_load_state_dict_post_hook(_forget_seen)

    @property
    def seen_examples(self) -> int:
        if self._seen is None:
            self._seen = int(self.num_seen)
        return self._seen

    def sample(self, size: int):
        n = min(self.seen_examples, self.buf_x.shape[0])
        size = min(size, n)
        choice = torch.from_numpy(np.random.choice(n, size=size, replace=False)).to(self.buf_x.device)
        return self.buf_x[choice], self.buf_y[choice], self.buf_logits[choice]

    def add(self, x, y, logits, ok=True) -> None:
        """Mammoth's reservoir, example by example (the slots drawn on the host), written in one go. On a GPU
        `ok` (the step was taken) is a device flag: the examples count as seen, and are stored only if ok."""
        if ok is False:
            return
        slots: dict[int, int] = {}
        for i in range(len(x)):
            slot = reservoir(self.seen_examples, self.buf_x.shape[0])
            self._seen += 1
            if slot >= 0:
                slots[slot] = i  # a later example taking the same slot overwrites an earlier one, as in sequence
        self.num_seen += len(x)
        if not slots:
            return
        dst = torch.from_numpy(np.fromiter(slots, dtype=np.int64)).to(x.device)
        src = torch.from_numpy(np.fromiter(slots.values(), dtype=np.int64)).to(x.device)
        with torch.no_grad():
            for buf, new in ((self.buf_x, x), (self.buf_y, y), (self.buf_logits, logits)):
                value = new.index_select(0, src).to(buf.dtype)
                if torch.is_tensor(ok):
                    value = torch.where(ok, value, buf.index_select(0, dst))
                buf.index_copy_(0, dst, value)

    def extra_loss(self, bs: int):
        bx, _, blogits = self.sample(bs)
        return self.hp["alpha"] * F.mse_loss(self.net(bx), blogits)

    def update(self, minibatches):
        x = torch.cat([x for x, _ in minibatches])
        y = torch.cat([y for _, y in minibatches])
        outputs = self.net(x)
        loss = F.cross_entropy(self.masked(outputs), y)
        if self.seen_examples > 0:
            loss = loss + self.extra_loss(len(x))
        ok = self.optimize(loss, self.optimizer)
        self.add(x, y, outputs.detach().float(), ok)
        return {"loss": loss.detach()}


def _forget_seen(module, incompatible_keys) -> None:
    module._seen = None


@STRATEGIES.register("derpp")
class DERpp(DER):
    about = "DER++: DER plus beta * cross-entropy on a second sample of buffered labels"

    def extra_loss(self, bs: int):
        loss = super().extra_loss(bs)
        bx, by, _ = self.sample(bs)
        return loss + self.hp["beta"] * F.cross_entropy(self.masked(self.net(bx)), by)


# ----------------------------------------------------------------------------- GDumb
@STRATEGIES.register("gdumb")
class GDumb(Strategy):
    about = "GDumb: a greedy class-balanced memory; each task trains from the initial weights on the memory alone"

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.initial = copy.deepcopy(self.net)
        for p in self.initial.parameters():
            p.requires_grad_(False)
        self.memory: list[tuple[Any, int]] = []

    def begin_task(self, task, classes, items):
        # The greedy sampler sees the task's stream, then the model restarts from its initial weights.
        order = np.random.RandomState(derive_seed(self.ctx.seed, "gdumb", task)).permutation(len(items))
        for i in order:
            self.offer(items[i])
        self.net.load_state_dict(self.initial.state_dict())
        super().begin_task(task, classes, items)

    def offer(self, item) -> None:
        """Prabhu et al.'s sampler: add while there is room; then admit a sample of an under-represented
        class by evicting a random sample of the largest class."""
        k = self.hp["memory"]
        if len(self.memory) < k:
            self.memory.append(item)
            return
        counts: dict[int, int] = {}
        for _, y in self.memory:
            counts[y] = counts.get(y, 0) + 1
        classes = set(counts) | {item[1]}
        if counts.get(item[1], 0) < k / len(classes):
            largest = max(counts, key=lambda c: (counts[c], -c))
            idx = [i for i, (_, y) in enumerate(self.memory) if y == largest]
            self.memory.pop(idx[np.random.RandomState(derive_seed(self.ctx.seed, "evict", len(self.memory),
                                                                   item[1])).randint(len(idx))])
            self.memory.append(item)

    def training_items(self, items):
        return list(self.memory)

    def checkpoint_extra(self):
        return {"memory": [[int(r), int(y)] for r, y in self.memory]}

    def load_extra(self, extra):
        self.memory = [(int(r), int(y)) for r, y in extra.get("memory", [])]
