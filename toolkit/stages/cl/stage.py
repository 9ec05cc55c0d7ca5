"""The `cl` stage: class-incremental learning, B{initial}-Inc{increment}, on the shared training loop.

The classes, in an order drawn as PyCIL draws it (np.random.seed(order_seed); permutation) or read
from a file, are split into tasks: `initial_classes`, then `increment` per task. After each task every
seen task's test samples are scored ([correct, total] counts), and metrics.py turns the counts into the
standard metrics. A finished task is checkpointed (the strategy's whole state), a task in progress
per epoch by the training loop: a killed run resumes where it stopped and computes the same numbers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ... import __version__
from ...core import threads as core_threads
from ...core.cache import derive_seed
from ...core.schema import NUMBER, split_rows
from ...core.device import pick_device, torch_device, torch_threads
from ...core.errors import AugurError
from ...core.faults import kill_point
from ...core.files import atomic_write, write_jsonl
from ...core.settings import as_dict
from ...core.stagerun import StageResult, StageRun
from ...core.tables import format_table
from ...learn import audit, backbones, data, loop
from ...learn.images import ImageStore
from ...learn.loaders import EpochBatches
from ...learn.transforms import data_config
from ...models.weights import resolve_weights
from .config import CLConfig
from .metrics import matrix, metrics
from .hparams import STRATEGY_HPARAMS
from .strategies import STRATEGIES, Context

SPLIT_SEED = "cl-test-split"  # one test split for every strategy, seed and class order


def load_scenario(cfg: CLConfig) -> tuple[list[str], list, list, str]:
    """(classes, train items, test items, how they were split)."""
    ds = data.load(cfg.data, rotated=False)
    names = {d.name for d in ds.domains}
    if {"train", "test"} <= names:
        train = [(img, int(y)) for img, y in zip(ds.domain("train").images, ds.domain("train").labels)]
        test = [(img, int(y)) for img, y in zip(ds.domain("test").images, ds.domain("test").labels)]
        return ds.classes, train, test, "the data's train and test domains"
    items = ds.pooled()
    rng = np.random.RandomState(derive_seed(SPLIT_SEED, cfg.test_share))
    train, test = [], []
    for c in range(len(ds.classes)):
        idx = [i for i, (_, y) in enumerate(items) if y == c]
        k = int(round(len(idx) * cfg.test_share))
        picked = set(rng.permutation(idx)[:k].tolist()) if idx else set()
        for i in idx:
            (test if i in picked else train).append(items[i])
    return ds.classes, train, test, f"stratified {1 - cfg.test_share:.0%}/{cfg.test_share:.0%} (fixed seed)"


def refuse_test_guides(cfg: CLConfig, w: Any, split_note: str) -> None:
    """A backbone pretrained on images guided by photos of this run's data must have been guided by its training
    split only: the data's `train` domain, never `test` (render refuses a domain named test) and never a folder
    whose test images are a stratified draw that the guides may have come from."""
    from ..render.guides import TEST_SPLIT, guided_by

    trained_on = (w.info or {}).get("data") if w.kind == "pretrained" else None
    guided = guided_by(Path(trained_on)) if isinstance(trained_on, str) and Path(trained_on).is_dir() else None
    if guided is None:
        return
    ours = cfg.data if cfg.data == "digits" else str(Path(cfg.data).expanduser().resolve())
    if guided["data"] != ours:
        return
    if TEST_SPLIT in guided["domains"] or split_note.startswith("stratified"):
        raise AugurError(f"--weights {w.path}: its backbone was pretrained on images guided by photos of {cfg.data}, "
                         f"drawn from {', '.join(guided['domains'])}, and this run's test images are {split_note} of "
                         f"it: a guide may be a test image. Guide the rendering with the training split only (a data "
                         "folder with train/ and test/ domains, --init-domains train)")


def class_order(cfg: CLConfig, classes: list[str]) -> list[int]:
    text = cfg.class_order.strip()
    if text.isdigit():
        return np.random.RandomState(int(text) % 2**32).permutation(len(classes)).tolist()
    p = Path(text).expanduser()
    if not p.is_file():
        raise AugurError(f"--class-order {text}: neither a seed nor an order file")
    from ...core.files import read_text

    listed = [line.strip() for line in read_text(p).splitlines() if line.strip()]
    missing = sorted(set(classes) - set(listed))
    extra = sorted(set(listed) - set(classes))
    if missing or extra or len(listed) != len(set(listed)):
        raise AugurError(f"{p}: the order must list every class once (missing: {', '.join(missing) or 'none'}; "
                         f"unknown: {', '.join(extra) or 'none'})")
    return [classes.index(c) for c in listed]


def make_tasks(order: list[int], initial: int, increment: int) -> list[list[int]]:
    n = len(order)
    if n < 2:
        raise AugurError(f"class-incremental learning needs at least 2 classes; the data has {n}")
    if initial > n:
        raise AugurError(f"--initial-classes {initial} exceeds the {n} classes")
    if initial == n:
        raise AugurError(f"--initial-classes {initial} takes every class: one task is not class-incremental")
    if (n - initial) % increment:
        raise AugurError(f"--increment {increment} does not divide the {n - initial} classes after the first {initial}")
    return [order[:initial]] + [order[i: i + increment] for i in range(initial, n, increment)]


@dataclass
class Scenario:
    """The classes, the split, and the tasks the order makes of them."""

    classes: list[str]
    train_items: list
    test_items: list
    split_note: str
    order: list[int]
    tasks: list[list[int]]


@dataclass
class Setup:
    """What a run resolves once before it claims its folder: the strategy, its hyper-parameters, the backbone,
    the threads and the precision."""

    name: str
    strategy_cls: Any
    hp: dict[str, Any]
    arch: str
    weights: Any
    threads: Any
    precision: str
    image_size_choice: str = "--image-size"


def run_cl(cfg: CLConfig, out: Path) -> StageResult:
    """One class-incremental run -> OUT/results.jsonl, accuracy_matrix.png; the StageResult's data is its final
    row."""
    from ...core.distributed import is_main_process

    out = Path(out)
    res = _run_once(cfg, out)
    return StageResult([f"cl: {res['protocol']} → {out / 'results.jsonl'}, {out / 'accuracy_matrix.png'}"],
                       tables=[table([res])], data=res, printed=is_main_process())


def _run_once(cfg: CLConfig, out: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    choice = core_threads.apply(cfg.threads)
    name = STRATEGIES.canonical(cfg.strategy)
    strategy_cls = STRATEGIES.get(name)
    hp = {**{k: v.default for k, v in STRATEGY_HPARAMS[name].items()}, **cfg.hp}  # typed by CLConfig.check()
    classes, train_items, test_items, split_note = load_scenario(cfg)
    order = class_order(cfg, classes)
    sc = Scenario(classes, train_items, test_items, split_note, order, make_tasks(order, cfg.initial_classes,
                                                                                   cfg.increment))
    arch, w = resolve_weights(cfg.weights, cfg.backbone)
    hp = strategy_cls.resolve_hp(hp, cfg.hp, arch, cfg.lora and strategy_cls.trains)
    cfg, size_choice = cfg.sized(arch, w)
    refuse_test_guides(cfg, w, split_note)
    setup = Setup(name, strategy_cls, hp, arch, w, choice, cfg.train_precision(),  # an impossible precision: refused
                  size_choice)
    ds_print = data.fingerprint(data.load(cfg.data, report=False, rotated=False))
    identity = {**{k: v for k, v in as_dict(cfg).items() if k not in ("workers", "hp", "strategy")},
                "strategy": name, "hparams": hp, "backbone": arch, "weights_sha256": w.sha256, "data": ds_print,
                "class_order_resolved": order}
    if not (cfg.lora and strategy_cls.trains):  # as before LoRA came to cl: folders written then keep resuming
        identity.pop("lora"), identity.pop("lora_rank")
    if not strategy_cls.trains:
        identity = _untrained_identity(out, identity)
    with StageRun(out, "cl", identity) as run:
        finished = _finished(out)
        if finished is not None:  # the claim matched these settings and every task is scored: nothing to redo
            return finished
        result = _run(cfg, out, sc, setup, run, t0)
        run.finish()
        return result


UNUSED_BY_UNTRAINED = {"epochs": 0, "lr": None, "weight_decay": None}  # as its rows record them


def _untrained_identity(out: Path, identity: dict[str, Any]) -> dict[str, Any]:
    """A strategy that trains no task (ncm, ranpac) is decided by none of the training settings: its identity
    holds them as its rows record them, so another --epochs or --lr finds the same finished folder. A folder
    written before 2026-12-07 holds the values asked for: it is the same run, and keeps its identity."""
    from ...core.files import read_json
    from ...core.outdir import as_recorded

    identity = {**identity, **UNUSED_BY_UNTRAINED}
    record = out / "cl.json"
    try:
        old = read_json(record).get("identity") if record.is_file() else None
    except AugurError:
        return identity
    if isinstance(old, dict) and {k: v for k, v in old.items() if k not in UNUSED_BY_UNTRAINED} == \
            {k: v for k, v in as_recorded(identity).items() if k not in UNUSED_BY_UNTRAINED}:
        return {**identity, **{k: old.get(k) for k in UNUSED_BY_UNTRAINED}}
    return identity


def _finished(out: Path) -> dict[str, Any] | None:
    """The final row of a run that completed (its last row final, its heatmap written last), else None."""
    from ...core.files import read_jsonl

    if not (out / "accuracy_matrix.png").is_file() or not (out / "results.jsonl").is_file():
        return None
    rows = read_jsonl(out / "results.jsonl")
    return rows[-1] if rows and rows[-1].get("final") else None


@dataclass
class Progress:
    """What a run has done: the [correct, total] counts after each finished task, and its training rate."""

    counts: list[list[list[int]]]
    rates: list[float | None]  # training images/s of each task (None: it trained nothing)

    @property
    def next_task(self) -> int:
        return len(self.counts)


def _build(cfg: CLConfig, sc: Scenario, setup: Setup):
    """The network, the run's image store (train and test images decoded once, on the training device when
    they fit), the strategy, and the store rows of the training and test images."""
    import torch

    device = torch_device()
    torch.manual_seed(cfg.seed)
    backbone = backbones.build(setup.arch, setup.weights, cfg.image_size)
    dc = data_config(backbone, cfg.image_size)
    if cfg.lora and setup.strategy_cls.trains:
        backbone = backbones.add_lora(backbone, setup.arch, cfg.lora_rank)
    store = ImageStore(sc.train_items + sc.test_items, dc, device, workers=cfg.workers)
    n_train = len(sc.train_items)
    rows = [(int(r), int(y)) for r, y in zip(range(len(store)), store.labels_np)]
    train_rows = [rows[i] for i, k in enumerate(store.kept) if k < n_train]
    test_rows = [rows[i] for i, k in enumerate(store.kept) if k >= n_train]
    ctx = Context(store, cfg.seed, len(sc.classes), cfg.image_size, cfg.lr, cfg.weight_decay, cfg.batch_size)
    strategy = setup.strategy_cls(backbone, setup.hp, ctx).to(device)
    return strategy, ctx, store, train_rows, test_rows


def _resume(out: Path, strategy, device) -> Progress:
    """The last finished task, written by the loop's writer (the whole strategy state), if any."""
    done = sorted(p for p in (out / "tasks").glob("task-*") if (p / "progress.json").is_file()) \
        if (out / "tasks").is_dir() else []
    if not done:
        return Progress([], [])
    progress, _ = loop.read_state(done[-1], strategy, device, strict_keys=False)
    return Progress(progress["counts"], progress.get("rates", [None] * len(progress["counts"])))


def _train_task(cfg: CLConfig, out: Path, setup: Setup, strategy, store, t: int, n_tasks: int, items, world
                ) -> float | None:
    """Train the strategy on task t (through the shared loop, checkpointed per epoch); its steady rate."""
    train = strategy.training_items(items)
    if len(train) < 2:
        raise AugurError(f"task {t + 1} has {len(train)} training image(s); training needs at least 2")
    batches = EpochBatches(len(train), cfg.batch_size, cfg.seed, ("task", t), world)
    feed = store.feed(np.array([r for r, _ in train], dtype=np.int64), batches)
    spe = batches.steps_per_epoch
    strategy.begin_training(cfg.epochs, spe)

    def stream(a: int, b: int):
        for x, y in feed.stream(a, b):
            yield [(x, y)]

    records = loop.run(strategy, stream, total_steps=cfg.epochs * spe, is_checkpoint=lambda s: (s + 1) % spe == 0,
                       ckpt=out / "checkpoint" / f"task-{t:03d}", seed=derive_seed(cfg.seed, "task", t),
                       precision=setup.precision, progress=cfg.progress, desc=f"cl {setup.name} task {t + 1}/{n_tasks}",
                       save_last=False)  # _save_task writes the whole strategy once the task is scored
    # the steady rate: epochs after the first (which pays one-time kernel choice), when there are some
    steady = [r["images_per_second"] for r in records[1:]] or [r["images_per_second"] for r in records]
    return float(np.mean(steady)) if steady else None


def _run(cfg: CLConfig, out: Path, sc: Scenario, setup: Setup, run: StageRun, t0: float) -> dict[str, Any]:
    """Every task in turn from where the folder stopped: begin, train, end, score every seen task, save."""
    device = torch_device()
    strategy, ctx, store, train_rows, test_rows = _build(cfg, sc, setup)
    done = _resume(out, strategy, device)
    tasks, classes = sc.tasks, sc.classes
    for t in range(done.next_task, len(tasks)):
        task_classes = tasks[t]
        items = [it for it in train_rows if it[1] in task_classes]
        with audit.phase():
            strategy.begin_task(t, task_classes, items)
        rate = None
        if strategy.trains_on(t) and cfg.epochs:
            rate = _train_task(cfg, out, setup, strategy, store, t, len(tasks), items, run.world)
        strategy.to(device)
        with audit.phase():
            strategy.end_task(t, task_classes, items)
            done.counts.append([_score(strategy, ctx, [it for it in test_rows if it[1] in tasks[j]])
                                for j in range(t + 1)])
        done.rates.append(rate)
        if run.main:
            _save_task(out, t, strategy, done.counts, done.rates)
            kill_point("cl.after_task")
            _write_results(cfg, out, sc, setup, strategy, done.counts, done.rates, t0)
            loop.clear(out / "checkpoint" / f"task-{t:03d}")
        run.wait()
        if cfg.progress:
            run.log(f"task {t + 1}/{len(tasks)} classes {[classes[c] for c in task_classes]}: accuracy on seen "
                    f"classes {metrics(done.counts)['last_accuracy']:.3f}")
    if run.main:
        result = _write_results(cfg, out, sc, setup, strategy, done.counts, done.rates, t0)
        heatmap(result["accuracy_matrix"], out / "accuracy_matrix.png",
                f"{setup.name}, {cfg.protocol()} ({setup.weights.describe()})")
        loop.clear(out / "checkpoint")
    run.wait()
    from ...core.files import read_jsonl

    return read_jsonl(out / "results.jsonl")[-1]


def _score(strategy, ctx, items) -> list[int]:
    """[correct, total] of the strategy's predictions on `items` (counted on the device, read once)."""
    import torch

    strategy.eval()
    correct = None
    with torch.inference_mode():
        for x, y in ctx.batches(items, 256):
            hits = (strategy.predict(x).argmax(1) == y).sum()
            correct = hits if correct is None else correct + hits
    return [int(correct) if correct is not None else 0, len(items)]


def _save_task(out: Path, t: int, strategy, counts, rates) -> None:
    """A finished task: the whole strategy state, through the loop's writer; the older task goes."""
    import shutil

    final = out / "tasks" / f"task-{t:03d}"
    loop.write_state(final, strategy, {"task": t, "counts": counts, "rates": rates})
    for old in (out / "tasks").glob("task-*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)


def _write_results(cfg: CLConfig, out: Path, sc: Scenario, setup: Setup, strategy, counts, rates, t0: float
                   ) -> dict[str, Any]:
    """One row per finished step; the last line is the run's final row once every task is done."""
    classes, w = sc.classes, setup.weights
    trained = [t for t in range(len(sc.tasks)) if strategy.trains_on(t) and cfg.epochs]
    base = {"strategy": setup.name, "hparams": setup.hp, "protocol": cfg.protocol(), "class_order": cfg.class_order,
            "order": [classes[c] for c in sc.order], "tasks": [[classes[c] for c in task] for task in sc.tasks],
            "backbone": setup.arch, "weights": w.describe(), **w.provenance(), "data": str(cfg.data),
            "split": sc.split_note, "image_size": cfg.image_size, "image_size_choice": setup.image_size_choice,
            "batch_size": cfg.batch_size, "seed": cfg.seed,
            # what was applied, not what was asked: a strategy that trains no task (NCM, RanPAC) ran 0 epochs and no
            # optimiser, so its --epochs, --lr and --weight-decay are recorded as 0 / None; `trained_tasks` says which;
            # fsa's first session may train by RanPAC's SGD, whose rate and decay are its hyper-parameters
            "epochs": cfg.epochs if trained else 0, "trained_tasks": trained,
            **(strategy.optimizer_settings() if trained else {"optimizer": None, "lr": None, "weight_decay": None}),
            "lora": bool(cfg.lora and trained), "lora_rank": cfg.lora_rank if cfg.lora and trained else None,
            "device": pick_device(), "threads": torch_threads(),
            "threads_choice": setup.threads.why, "precision": setup.precision, "toolkit_version": __version__}
    rows = []
    for t in range(len(counts)):
        sub = counts[: t + 1]
        m = metrics(sub)
        rows.append({**base, "step": t, "final": t == len(sc.tasks) - 1, "counts": sub,
                     "accuracy_matrix": matrix(sub, len(sc.tasks)), "images_per_second": rates[t], **m})
    rows[-1]["wall_seconds"] = time.perf_counter() - t0
    write_jsonl(out / "results.jsonl", rows)
    return rows[-1]


def heatmap(A, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    T = len(A)
    a = np.array([[np.nan if v is None else v for v in row] for row in A], dtype=float)
    fig, ax = plt.subplots(figsize=(1.5 + 0.7 * T, 1.2 + 0.6 * T))
    ax.imshow(a, vmin=0, vmax=1, cmap="viridis")
    for i in range(T):
        for j in range(a.shape[1]):
            if not np.isnan(a[i, j]):
                ax.text(j, i, f"{100 * a[i, j]:.0f}", ha="center", va="center",
                        color="white" if a[i, j] < 0.6 else "black", fontsize=8)
    ax.set_xlabel("evaluated on task")
    ax.set_ylabel("after training task")
    ax.set_xticks(range(a.shape[1]), [str(i + 1) for i in range(a.shape[1])])
    ax.set_yticks(range(T), [str(i + 1) for i in range(T)])
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


# A CL run's final row, as `augur cl` writes it (what collect and the report read of it).
ROW_SCHEMA = {"strategy": (str,), "weights": (str,), "backbone": (str,), "protocol": (str,),
              "average_incremental_accuracy": NUMBER, "last_accuracy": NUMBER, "average_forgetting": NUMBER}


def table(results: list[dict[str, Any]], style: str = "plain") -> str:
    """One line per run (mean ± std over class orders when several rows share everything else: a strategy's
    rows that differ in a hyper-parameter or run setting are separate lines, labelled with it)."""
    from .compare import variant_labels

    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r, label in zip(results, variant_labels(results)):
        groups.setdefault((label, r["weights"], r["backbone"], r["protocol"]), []).append(r)
    header = ["strategy", "backbone", "weights", "protocol", "orders", "avg inc acc", "last acc", "forgetting"]
    body = []
    for (strategy, weights, backbone, protocol), rs in groups.items():
        def cell(key: str) -> str:
            v = [100 * r[key] for r in rs]
            return f"{np.mean(v):.1f}" + (f" ± {np.std(v):.1f}" if len(v) > 1 else "")

        shown = Path(weights).name if "/" in weights else weights  # a pretrained folder: its name
        body.append([strategy, backbone, shown, protocol, str(len(rs)), cell("average_incremental_accuracy"),
                     cell("last_accuracy"), cell("average_forgetting")])
    return format_table(header, body, style)


def collect(dirs: list[Path], style: str = "markdown", compare: str | None = None, baseline: str | None = None) -> str:
    """table() over the final row of every `augur cl` run found under `dirs`; with `compare` ("weights"), then the
    paired comparison of the arms (compare.py)."""
    from ...core.files import read_jsonl

    rows = []
    for d in dirs:
        d = Path(d)
        if not d.exists():
            raise AugurError(f"{d}: no such folder")
        for f in sorted(d.rglob("results.jsonl")):
            rows += split_rows([r for r in read_jsonl(f) if isinstance(r, dict) and r.get("final")], ROW_SCHEMA,
                               "CL final rows", str(f))
    if not rows:
        raise AugurError(f"no finished `augur cl` run (results.jsonl with a final row) under {', '.join(map(str, dirs))}")
    if compare:
        from .compare import compare_table

        return table(rows, style) + "\n\n" + compare_table(rows, baseline, style)
    return table(rows, style)
