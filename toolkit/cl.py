"""The `cl` stage: class-incremental continual learning, with a backbone from `augur pretrain`.

A scenario splits the classes (order from the seed) into tasks: `initial_classes`, then `increment`
per task. Strategies are a registry, one class each with its hyper-parameters in one place (as
Mammoth's per-method configs); adding one is one new class. Metrics are the ones CL papers report:
the accuracy matrix A[t][j] (after task t, on task j's test classes), average incremental accuracy
(the mean over t of the mean of A[t][0..t]), last accuracy (the mean of the last row) and average
forgetting (the mean over j < T-1 of max_{t < T-1} A[t][j] - A[T-1][j]).
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__, backbones, data
from .cache import derive_seed
from .errors import AugurError
from .fileio import atomic_path, check_identity, write_jsonl
from .registry import registrar

STRATEGIES: dict[str, type["Strategy"]] = {}


def _pick_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


DEVICE = _pick_device()


strategy = registrar(STRATEGIES)


@dataclass
class CLConfig:
    strategy: str = "naive"
    initial_classes: int = 2
    increment: int = 2
    backbone: str = "resnet18"
    weights: Path | None = None  # --backbone PATH: a folder from `augur pretrain`
    epochs: int = 2
    batch_size: int = 64
    lr: float = 1e-3
    image_size: int = 16
    seed: int = 0
    test_share: float = 0.2
    hparams: dict[str, Any] = field(default_factory=dict)  # overrides of the strategy's own
    progress: bool = True

    def validate(self, n_classes: int) -> None:
        if self.strategy not in STRATEGIES:
            raise AugurError(f"unknown strategy '{self.strategy}'; choose one of {', '.join(STRATEGIES)}")
        if self.initial_classes < 1 or self.increment < 1:
            raise AugurError("--initial-classes and --increment must be at least 1")
        if self.initial_classes > n_classes:
            raise AugurError(f"--initial-classes {self.initial_classes} exceeds the {n_classes} classes")
        if (n_classes - self.initial_classes) % self.increment:
            raise AugurError(f"--increment {self.increment} does not divide the {n_classes - self.initial_classes} "
                             f"classes after the first {self.initial_classes}")
        if self.epochs < 0 or self.batch_size < 1:
            raise AugurError("--epochs must be >= 0 and --batch-size >= 1")
        unknown = set(self.hparams) - set(STRATEGIES[self.strategy].hparams)
        if unknown:
            raise AugurError(f"strategy '{self.strategy}' has no hyper-parameter(s) {', '.join(sorted(unknown))}; "
                             f"it takes {', '.join(STRATEGIES[self.strategy].hparams) or 'none'}")
        hp = {**STRATEGIES[self.strategy].hparams, **self.hparams}
        if "memory" in hp and (not isinstance(hp["memory"], int) or hp["memory"] < 1):
            raise AugurError(f"strategy '{self.strategy}' needs a memory of at least 1 exemplar, got {hp['memory']}")
        if "selection" in hp and hp["selection"] not in ("random", "herding"):
            raise AugurError("selection must be random or herding")


# ----------------------------------------------------------------------------- strategies
class Strategy:
    """Trains the shared model task by task. Subclasses change the loss, the data or the classifier."""

    hparams: dict[str, Any] = {}
    trains = True

    def __init__(self, net, n_classes: int, hp: dict[str, Any], cfg: CLConfig):
        self.net, self.n_classes, self.cfg = net, n_classes, cfg
        self.hp = {**type(self).hparams, **hp}
        self.seen: list[int] = []

    # -- hooks
    def extra_data(self) -> list[tuple[Any, int]]:
        """Samples added to the current task's training data (replay memories)."""
        return []

    def loss(self, logits, y, x):
        import torch.nn.functional as F

        return F.cross_entropy(logits, y)

    def after_task(self, task_items: list[tuple[Any, int]], classes: list[int]) -> None:
        pass

    def predict(self, x):
        return self._masked(self.net(x)).argmax(1)

    # -- helpers
    def _masked(self, logits):
        """Only classes seen so far can be predicted (class-incremental, single head)."""
        import torch

        mask = torch.full((self.n_classes,), float("-inf"), device=logits.device)
        mask[self.seen] = 0.0
        return logits + mask

    def features(self, x):
        return self.net.backbone(x)

    # -- checkpoint
    def state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(tensors, json-able) beyond the network's own weights."""
        return {}, {"seen": self.seen}

    def load(self, tensors: dict[str, Any], meta: dict[str, Any]) -> None:
        self.seen = meta["seen"]


@strategy("naive")
class Naive(Strategy):
    """Fine-tuning on each task's data alone: the lower bound."""


class _Memory(Strategy):
    """A fixed-size exemplar memory shared by all seen classes."""

    hparams = {"memory": 200, "selection": "random"}

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.memory: list[tuple[Any, int]] = []

    def extra_data(self):
        return list(self.memory)

    def after_task(self, task_items, classes):
        per_class = max(1, self.hp["memory"] // len(self.seen))
        kept: dict[int, list] = {}
        for x, y in self.memory:
            kept.setdefault(y, []).append((x, y))
        for c in classes:
            items = [(x, y) for x, y in task_items if y == c]
            kept[c] = self._select(items, per_class, c)
        self.memory = [it for c in sorted(kept) for it in kept[c][:per_class]]

    def _select(self, items, k, c):
        if self.hp["selection"] == "herding":
            return herding(self, items, k)
        rng = np.random.RandomState(derive_seed(self.cfg.seed, "memory", c))
        return [items[i] for i in sorted(rng.choice(len(items), size=min(k, len(items)), replace=False))]

    def state(self):
        t, m = super().state()
        return t, {**m, "memory": [[_ref(x), y] for x, y in self.memory]}

    def load(self, tensors, meta):
        super().load(tensors, meta)
        self.memory = [(_deref(x), y) for x, y in meta["memory"]]


@strategy("replay")
class Replay(_Memory):
    """Experience replay: each task trains on its data plus the memory."""


class _Distill(Strategy):
    """Keeps a frozen copy of the model from the end of the last task and distils its old-class outputs."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.old = None
        self.old_classes: list[int] = []

    def loss(self, logits, y, x):
        import torch
        import torch.nn.functional as F

        ce = super().loss(logits, y, x)
        if self.old is None:
            return ce
        with torch.no_grad():
            target = self.old(x)[:, self.old_classes]
        T = self.hp["temperature"]
        kd = F.kl_div(F.log_softmax(logits[:, self.old_classes] / T, 1), F.softmax(target / T, 1),
                      reduction="batchmean") * T * T
        return ce + self.hp["alpha"] * kd

    def after_task(self, task_items, classes):
        super().after_task(task_items, classes)
        self.old = _frozen_copy(self.net)
        self.old_classes = list(self.seen)

    def state(self):
        t, m = super().state()
        if self.old is not None:
            t.update({f"old.{k}": v for k, v in self.old.state_dict().items()})
        return t, {**m, "old_classes": self.old_classes}

    def load(self, tensors, meta):
        super().load(tensors, meta)
        self.old_classes = meta["old_classes"]
        if self.old_classes:
            self.old = _frozen_copy(self.net)
            self.old.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("old.")})


def _frozen_copy(net):
    old = copy.deepcopy(net).eval()
    for p in old.parameters():
        p.requires_grad_(False)
    return old


@strategy("lwf")
class LwF(_Distill):
    """Learning without Forgetting: distil the previous model's old-class outputs."""

    hparams = {"alpha": 1.0, "temperature": 2.0}


@strategy("ewc")
class EWC(Strategy):
    """Elastic Weight Consolidation: a quadratic penalty weighted by the diagonal Fisher information."""

    hparams = {"lambda": 100.0, "fisher_batches": 8}

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.fisher: dict[str, Any] = {}
        self.anchor: dict[str, Any] = {}

    def loss(self, logits, y, x):
        import torch.nn.functional as F

        ce = F.cross_entropy(logits, y)
        if not self.fisher:
            return ce
        penalty = sum((self.fisher[n] * (p - self.anchor[n]) ** 2).sum()
                      for n, p in self.net.named_parameters() if n in self.fisher)
        return ce + self.hp["lambda"] / 2 * penalty

    def after_task(self, task_items, classes):
        import torch
        import torch.nn.functional as F

        fisher = {n: torch.zeros_like(p) for n, p in self.net.named_parameters() if p.requires_grad}
        self.net.eval()
        ds = _TensorItems(task_items, self.cfg.image_size)
        loader = torch.utils.data.DataLoader(ds, batch_size=self.cfg.batch_size, shuffle=False)
        n = 0
        for i, (x, y) in enumerate(loader):
            if i >= self.hp["fisher_batches"]:
                break
            x, y = x.to(DEVICE), y.to(DEVICE)
            self.net.zero_grad()
            F.cross_entropy(self._masked(self.net(x)), y).backward()
            for name, p in self.net.named_parameters():
                if p.grad is not None and name in fisher:
                    fisher[name] += p.grad.detach() ** 2
            n += 1
        for name in fisher:
            fisher[name] /= max(n, 1)
            self.fisher[name] = (self.fisher[name] + fisher[name]) / 2 if name in self.fisher else fisher[name]
        self.anchor = {n: p.detach().clone() for n, p in self.net.named_parameters() if n in fisher}

    def state(self):
        t, m = super().state()
        t.update({f"fisher.{k}": v for k, v in self.fisher.items()})
        t.update({f"anchor.{k}": v for k, v in self.anchor.items()})
        return t, m

    def load(self, tensors, meta):
        super().load(tensors, meta)
        self.fisher = {k[7:]: v.to(DEVICE) for k, v in tensors.items() if k.startswith("fisher.")}
        self.anchor = {k[7:]: v.to(DEVICE) for k, v in tensors.items() if k.startswith("anchor.")}


class _NearestMean(Strategy):
    """Classifies by the nearest class mean of L2-normalised backbone features."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.means = None

    def predict(self, x):
        return nearest_mean(self, x, self.means)

    def state(self):
        t, m = super().state()
        if self.means is not None:
            t["means"] = self.means
        return t, m

    def load(self, tensors, meta):
        super().load(tensors, meta)
        self.means = tensors["means"].to(DEVICE) if "means" in tensors else None


@strategy("icarl")
class ICaRL(_Distill, _Memory, _NearestMean):
    """iCaRL: herding memory, distillation of old outputs, nearest-mean-of-exemplars classification."""

    hparams = {"memory": 200, "selection": "herding", "alpha": 1.0, "temperature": 2.0}

    def after_task(self, task_items, classes):
        super().after_task(task_items, classes)
        self.means = class_means(self, self.memory, self.n_classes)


@strategy("prototype")
class Prototype(_NearestMean):
    """Frozen backbone, nearest class mean of its features (SimpleCIL / first-session adaptation)."""

    trains = False

    def after_task(self, task_items, classes):
        new = class_means(self, task_items, self.n_classes)  # zero rows for every other class
        self.means = new if self.means is None else self.means + new


# ----------------------------------------------------------------------------- feature-space helpers
class _TensorItems:
    def __init__(self, items, image_size):
        self.set = data.ImageSet([], image_size)
        self.set.items = items

    def __len__(self):
        return len(self.set)

    def __getitem__(self, i):
        return self.set[i]


def _features(strategy: Strategy, items):
    import torch
    import torch.nn.functional as F

    strategy.net.eval()
    ds = _TensorItems(items, strategy.cfg.image_size)
    feats, labels = [], []
    with torch.no_grad():
        for x, y in torch.utils.data.DataLoader(ds, batch_size=256, shuffle=False):
            feats.append(F.normalize(strategy.features(x.to(DEVICE)), dim=1))
            labels.append(y)
    return torch.cat(feats), torch.cat(labels)


def class_means(strategy: Strategy, items, n_classes: int):
    import torch
    import torch.nn.functional as F

    f, y = _features(strategy, items)
    means = torch.zeros(n_classes, f.shape[1], device=f.device)
    for c in y.unique().tolist():
        means[c] = F.normalize(f[y == c].mean(0), dim=0)
    return means


def nearest_mean(strategy: Strategy, x, means):
    import torch.nn.functional as F

    f = F.normalize(strategy.features(x), dim=1)
    sims = f @ means.T
    return strategy._masked(sims).argmax(1)


def herding(strategy: Strategy, items, k: int):
    """iCaRL's herding: greedily pick samples whose running mean tracks the class mean."""
    import torch

    f, _ = _features(strategy, items)
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


def _ref(x):
    """Memory items are image paths, or pixel arrays for the built-in digits."""
    return str(x) if not isinstance(x, np.ndarray) else {"array": x.tolist()}


def _deref(x):
    return np.asarray(x["array"], dtype=np.uint8) if isinstance(x, dict) else Path(x)


# ----------------------------------------------------------------------------- scenario and metrics
def load_scenario_data(source: str | Path):
    """All images of a source pooled over its domains. 'digits' is the unrotated digits (SplitDigits)."""
    if str(source) == "digits":
        from sklearn.datasets import load_digits
        from PIL import Image

        d = load_digits()
        imgs = [np.asarray(Image.fromarray((im * (255.0 / 16.0)).astype(np.uint8)).resize((32, 32), Image.BILINEAR))
                for im in d.images]
        return [str(c) for c in range(10)], list(zip(imgs, d.target.astype(int).tolist()))
    ds = data.load(source)
    return ds.classes, [(img, int(lab)) for dom in ds.domains for img, lab in zip(dom.images, dom.labels)]


def make_tasks(n_classes: int, cfg: CLConfig) -> list[list[int]]:
    order = np.random.RandomState(cfg.seed).permutation(n_classes).tolist()
    tasks = [order[: cfg.initial_classes]]
    for i in range(cfg.initial_classes, n_classes, cfg.increment):
        tasks.append(order[i: i + cfg.increment])
    return tasks


def metrics(matrix: list[list[float]]) -> dict[str, float]:
    """From A[t][j] (j <= t filled): average incremental accuracy, last accuracy, average forgetting."""
    T = len(matrix)
    avg_inc = float(np.mean([np.mean(matrix[t][: t + 1]) for t in range(T)]))
    last = float(np.mean(matrix[T - 1][:T]))
    forgetting = float(np.mean([max(matrix[t][j] for t in range(j, T - 1)) - matrix[T - 1][j]
                                for j in range(T - 1)])) if T > 1 else 0.0
    return {"average_incremental_accuracy": avg_inc, "last_accuracy": last, "average_forgetting": forgetting}


def run_cl(source: str | Path, out: Path, cfg: CLConfig) -> dict[str, Any]:
    import torch
    from safetensors.torch import load_file, save_file

    from .train import Classifier

    out = Path(out)
    classes, items = load_scenario_data(source)
    cfg.validate(len(classes))
    tasks = make_tasks(len(classes), cfg)
    rng = np.random.RandomState(derive_seed(cfg.seed, "split"))
    test_mask = rng.rand(len(items)) < cfg.test_share
    train_items = [it for it, m in zip(items, test_mask) if not m]
    test_items = [it for it, m in zip(items, test_mask) if m]
    torch.manual_seed(cfg.seed)
    backbone = backbones.create(cfg.backbone, cfg.image_size)
    if cfg.weights:
        info = backbones.backbone_info(Path(cfg.weights))
        if info and info.get("backbone") != cfg.backbone:
            raise AugurError(f"{cfg.weights} holds a {info['backbone']} backbone, not {cfg.backbone}")
        backbones.load_weights(backbone, Path(cfg.weights))
    net = Classifier.build(backbone, len(classes)).to(DEVICE)
    strat = STRATEGIES[cfg.strategy](net, len(classes), cfg.hparams, cfg)
    if not strat.trains:
        for p in net.parameters():
            p.requires_grad_(False)
    matrix: list[list[float]] = []
    identity = {"data": str(source), **{k: (str(v) if isinstance(v, Path) else v)
                                        for k, v in asdict(cfg).items() if k != "progress"}}
    check_identity(out, "cl.json", identity, "use another --out")
    ckpt = out / "checkpoints"
    start = 0
    done = sorted(int(p.name.split("-")[1]) for p in ckpt.glob("task-*") if (p / "meta.json").exists())
    if done:
        last = ckpt / f"task-{done[-1]}"
        meta = json.loads((last / "meta.json").read_text())
        net.load_state_dict(load_file(str(last / "model.safetensors")))
        tensors = load_file(str(last / "strategy.safetensors")) if (last / "strategy.safetensors").exists() else {}
        strat.load(tensors, meta["strategy"])
        matrix, start = meta["matrix"], done[-1] + 1
    t0 = time.perf_counter()
    for t in range(start, len(tasks)):
        task_classes = tasks[t]
        strat.seen = sorted(set(strat.seen) | set(task_classes))
        task_train = [it for it in train_items if it[1] in task_classes]
        if strat.trains and cfg.epochs:
            _train_task(strat, task_train + strat.extra_data(), cfg, t)
        strat.after_task(task_train, task_classes)
        row = [_task_accuracy(strat, [it for it in test_items if it[1] in tasks[j]], cfg) for j in range(t + 1)]
        matrix.append(row + [None] * (len(tasks) - t - 1))
        _save_task(ckpt, t, net, strat, matrix, save_file)
        if cfg.progress:
            print(f"task {t + 1}/{len(tasks)} classes {[classes[c] for c in task_classes]}: "
                  f"accuracy on seen tasks {np.mean(row):.3f}", file=sys.stderr)
    m = metrics([[v for v in r] for r in matrix])
    result = {"strategy": cfg.strategy, "hparams": {**STRATEGIES[cfg.strategy].hparams, **cfg.hparams},
              "backbone": cfg.backbone, "weights": str(cfg.weights) if cfg.weights else "none",
              "tasks": [[classes[c] for c in task] for task in tasks], "accuracy_matrix": matrix, **m,
              "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items() if k != "progress"},
              "toolkit_version": __version__, "wall_seconds": time.perf_counter() - t0}
    write_jsonl(out / "results.jsonl", [result])
    heatmap(matrix, out / "accuracy_matrix.png", f"{cfg.strategy} ({'pretrained' if cfg.weights else 'random init'})")
    return result


def _train_task(strat: Strategy, items, cfg: CLConfig, task: int) -> None:
    import torch

    ds = _TensorItems(items, cfg.image_size)
    params = [p for p in strat.net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr)
    for epoch in range(cfg.epochs):
        g = torch.Generator().manual_seed(derive_seed(cfg.seed, "cl", task, epoch))
        strat.net.train()
        for x, y in torch.utils.data.DataLoader(ds, batch_size=cfg.batch_size,
                                                sampler=torch.utils.data.RandomSampler(ds, generator=g)):
            x, y = x.to(DEVICE), y.to(DEVICE)
            opt.zero_grad(set_to_none=True)
            logits = strat._masked(strat.net(x))
            strat.loss(logits, y, x).backward()
            opt.step()


def _task_accuracy(strat: Strategy, items, cfg: CLConfig) -> float:
    import torch

    strat.net.eval()
    correct = 0
    with torch.no_grad():
        for x, y in torch.utils.data.DataLoader(_TensorItems(items, cfg.image_size), batch_size=256):
            correct += (strat.predict(x.to(DEVICE)).cpu() == y).sum().item()
    return correct / max(len(items), 1)


def _save_task(ckpt: Path, t: int, net, strat: Strategy, matrix, save_file) -> None:
    """Written to a temp folder, renamed when complete: a kill leaves the previous task's checkpoint."""
    final = ckpt / f"task-{t}"
    tmp = ckpt / f".task-{t}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(tmp / "model.safetensors"))
    tensors, meta = strat.state()
    if tensors:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / "strategy.safetensors"))
    (tmp / "meta.json").write_text(json.dumps({"task": t, "matrix": matrix, "strategy": meta}))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)


def heatmap(matrix, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    T = len(matrix)
    a = np.array([[np.nan if v is None else v for v in row] for row in matrix], dtype=float)
    fig, ax = plt.subplots(figsize=(1 + 0.7 * T, 1 + 0.6 * T))
    ax.imshow(a, vmin=0, vmax=1, cmap="viridis")
    for i in range(T):
        for j in range(T):
            if not np.isnan(a[i, j]):
                ax.text(j, i, f"{100 * a[i, j]:.0f}", ha="center", va="center",
                        color="white" if a[i, j] < 0.6 else "black", fontsize=8)
    ax.set_xlabel("evaluated on task")
    ax.set_ylabel("after training task")
    ax.set_xticks(range(T), [str(i + 1) for i in range(T)])
    ax.set_yticks(range(T), [str(i + 1) for i in range(T)])
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def table(results: list[dict[str, Any]]) -> str:
    header = ["strategy", "backbone", "avg inc acc", "last acc", "forgetting"]
    rows = [[r["strategy"], "pretrained" if r["weights"] != "none" else "random",
             f"{100 * r['average_incremental_accuracy']:.1f}", f"{100 * r['last_accuracy']:.1f}",
             f"{100 * r['average_forgetting']:.1f}"] for r in results]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in [header, *rows])
