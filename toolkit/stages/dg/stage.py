"""The `dg` stage: domain generalization with DomainBed's protocol.

A sweep is a set of runs, as DomainBed's: for each trial seed, hyper-parameter draw and set of test
environments, one run trains an algorithm on the other environments with one minibatch per training
environment per step (infinite loaders, sampling with replacement), and evaluates every split of every
environment at every checkpoint. Every environment is split into in (80%) and out (20%, the
holdout fraction) by DomainBed's seeds. From the same runs come training-domain validation and the
test-domain oracle (the default selections); leave-one-domain-out, when asked for, adds one run per
pair of real domains. Before training, the sweep says how many runs it will train and why.

Settings of Beyond Finite Data: --synthetic adds rendered domains as training environments (one
environment, or one per rendered domain), --single-source trains on one real domain (+ synthetic) and
tests on every other, --data-free trains on synthetic data alone and tests on every real domain.

Output: OUT/results.jsonl, one row per test domain x trial x hyper-parameter draw x selection method;
OUT/runs/<run>/records.json, every checkpoint record of a run; `augur dg collect` makes the tables.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ... import __version__
from ...core import threads as core_threads
from ...core.device import pick_device, torch_threads
from ...core.errors import AugurError
from ...core.faults import kill_point
from ...core.files import append_jsonl, read_json, read_jsonl, write_json, write_jsonl
from ...core.names import path_name
from ...core.settings import as_dict
from ...core.stagerun import StageResult, StageRun
from ...learn import audit, backbones, data, loop
from ...learn.loaders import InfiniteBatches
from ...learn.transforms import data_config
from ...models.weights import resolve_weights
from . import selection as sel
from .averaging import averaging_of
from .regimes import regime_of
from .algorithms import ALGORITHMS
from .config import DGConfig
from .collect import effective_hparams
from .hparams import SMALL_IMAGE_PX, hparam_class, hparams_for, seed_hash

N_STEPS = 5001  # DomainBed's MultipleDomainDataset.N_STEPS
EVAL_BATCH = 64  # DomainBed's FastDataLoader batch size (eval mode: the batch changes no prediction)
EVAL_BATCH_GPU = 512


@dataclass
class Env:
    name: str
    items: list[tuple[Any, int]]  # as read: (path or array, label)
    real: bool
    augmentable: bool = True  # what DomainBed would do with its source (data.MultiDomain.augment)
    rows: Any = None  # np.ndarray: its readable images' rows in the sweep's image store
    labels: Any = None  # np.ndarray: their labels
    sources: list | None = None  # as read: each item's guiding real domain (a guided render), else None
    source_of: Any = None  # np.ndarray: the same for its store rows


@dataclass(frozen=True)
class RunSpec:
    test_envs: tuple[str, ...]
    trial: int
    hparams_seed: int

    @property
    def key(self) -> str:
        return path_name(f"test-{'+'.join(self.test_envs)}-trial{self.trial}-hp{self.hparams_seed}")


def data_size(image_px: int) -> str:
    """DomainBed's dataset classes by image size: its small-image (MNIST) datasets, or image folders."""
    return "small" if image_px <= SMALL_IMAGE_PX else "large"


def checkpoint_freq(cfg: DGConfig, image_px: int) -> int:
    """Steps between evaluations: the setting, else the averaging's cadence for data of this size."""
    return cfg.checkpoint_freq or averaging_of(cfg).checkpoint_freq[data_size(image_px)]


def environments(cfg: DGConfig) -> tuple[list[str], list[Env], data.MultiDomain]:
    real = data.load(cfg.data)
    envs = [Env(d.name, [(img, int(lab)) for img, lab in zip(d.images, d.labels)], True, real.augment)
            for d in real.domains]
    if cfg.synthetic:
        synth = data.load(cfg.synthetic)
        data.check_same_classes(real, synth)
        remap = {i: real.classes.index(c) for i, c in enumerate(synth.classes)}
        guided = any(d.sources for d in synth.domains)
        src = lambda ds: [s for d in ds for s in (d.sources or [None] * len(d.images))] if guided else None  # noqa: E731
        if cfg.synthetic_envs == "one":
            envs.append(Env("synthetic", [(img, remap[int(lab)]) for d in synth.domains
                                          for img, lab in zip(d.images, d.labels)], False, synth.augment,
                            sources=src(synth.domains)))
        else:
            envs += [Env(f"synthetic/{d.name}", [(img, remap[int(lab)]) for img, lab in zip(d.images, d.labels)],
                         False, synth.augment, sources=src([d])) for d in synth.domains]
    return real.classes, envs, real


def setting_of(cfg: DGConfig) -> str:
    return regime_of(cfg).name


def train_env_names(cfg: DGConfig, spec: RunSpec, real_names: list[str], synthetic_names: list[str]) -> list[str]:
    """The environments a run trains on (DomainBed: every environment not held out; regimes.py)."""
    return regime_of(cfg).train_envs(spec.test_envs, real_names, list(synthetic_names))


def plan_runs(cfg: DGConfig, real_names: list[str], synthetic_names: list[str] = ()) -> tuple[list[RunSpec], list[str]]:
    """Every run the sweep needs, and the test domains its rows are about. Each run is checked to have
    something to train on here, before any of them trains."""
    regime = regime_of(cfg)
    tests = cfg.test_domains or real_names
    for t in tests:
        if t not in real_names:
            raise AugurError(f"no domain '{t}' in {cfg.data}; domains: {', '.join(real_names)}")
    if cfg.single_source and cfg.single_source not in real_names:
        raise AugurError(f"no domain '{cfg.single_source}' in {cfg.data}; domains: {', '.join(real_names)}")
    runs = [RunSpec(held, trial, h) for trial in cfg.trial_seeds() for h in cfg.hparams_seed
            for held in regime.held_out(tests, real_names)]
    tests = regime.tests(tests)
    if not tests and cfg.single_source:  # otherwise the sweep trains, tests nothing and writes an empty table
        raise AugurError(f"single source '{cfg.single_source}' leaves no domain to test on in {cfg.data}")
    for spec in runs:
        if not regime.train_envs(spec.test_envs, real_names, list(synthetic_names)):
            if len(spec.test_envs) == 2 and regime.pairs:
                raise AugurError(f"leave-one-domain-out selection on {len(real_names)} domains: the run holding out "
                                 f"{spec.test_envs[0]} and {spec.test_envs[1]} would train on nothing; it needs 3 or "
                                 "more domains (or --synthetic), or leave it out of --selection")
            raise AugurError(f"the run testing on {', '.join(spec.test_envs)} has no domain to train on in {cfg.data}")
    return runs, tests


def describe_plan(cfg: DGConfig, runs: list[RunSpec], tests: list[str], done: int) -> str:
    """How many runs the sweep trains, and why (no silent multiplication of work)."""
    n = len(runs)
    trials, draws = len(cfg.trial_seeds()), len(cfg.hparams_seed)
    per = f"{_count(trials, 'trial')} x {_count(draws, 'hparams draw')}"
    pairs = sum(len(r.test_envs) == 2 for r in runs) // max(trials * draws, 1)
    why = regime_of(cfg).why(tests, per, pairs)
    return f"dg: {_count(n, 'run')} ({why})" + (f"; {done} already done" if done else "")


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def label_of(cfg: DGConfig) -> str:
    label = cfg.algorithm + averaging_of(cfg).label
    if cfg.synthetic:
        label += f"+synthetic({cfg.synthetic_envs})"
    if cfg.lora:
        label += "+LoRA"
    return label


@dataclass
class Sweep:
    """Everything a sweep resolves once, before its folder is claimed: weights, data, regime, settings.
    The images of every environment are decoded once for all its runs (`store`, see `images`)."""

    arch: str
    weights: Any
    classes: list[str]
    envs: list[Env]
    real: data.MultiDomain
    image_px: int
    hclass: str
    pretrained: bool
    overrides: dict[str, Any]
    freq: int
    dc: Any = None
    store: Any = None
    threads: Any = None  # core.threads.ThreadChoice
    precision: str = "fp32"  # resolved once (LoopSettings.train_precision)
    image_size_choice: str = "--image-size"

    def images(self, cfg: DGConfig) -> None:
        """Decode every environment's images into one store on the training device (learn/images.py)."""
        from ...core.device import torch_device
        from ...learn.images import ImageStore

        self.dc = data_config(backbones.create(self.arch, cfg.image_size), cfg.image_size)
        all_items = [it for e in self.envs for it in e.items]
        self.store = ImageStore(all_items, self.dc, torch_device(), workers=cfg.workers)
        ends = np.cumsum([len(e.items) for e in self.envs])
        which = np.searchsorted(ends, self.store.kept, side="right")  # the environment of each store row
        starts = np.concatenate([[0], ends[:-1]])
        for i, e in enumerate(self.envs):
            e.rows = np.flatnonzero(which == i)
            e.labels = self.store.labels_np[e.rows]
            if e.sources is not None:
                e.source_of = np.array(e.sources, dtype=object)[self.store.kept[e.rows] - starts[i]]
            if len(e.rows) == 0:
                raise AugurError(f"domain '{e.name}' has no readable image")

    @property
    def real_names(self) -> list[str]:
        return [e.name for e in self.envs if e.real]

    @property
    def synthetic_names(self) -> list[str]:
        return [e.name for e in self.envs if not e.real]


def resolve(cfg: DGConfig) -> Sweep:
    arch, w = resolve_weights(cfg.weights, cfg.backbone)
    classes, envs, real = environments(cfg)
    pretrained = w.kind != "none"
    image_px = real.image_px()
    hclass = hparam_class(pretrained, image_px)
    overrides = dict(cfg.hp)  # typed by DGConfig.check()
    if cfg.lr is not None:
        overrides["lr"] = cfg.lr
    if cfg.batch_size is not None:
        overrides["batch_size"] = cfg.batch_size
    return Sweep(arch, w, classes, envs, real, image_px, hclass, pretrained, overrides, checkpoint_freq(cfg, image_px))



def run_dg(cfg: DGConfig, out: Path) -> StageResult:
    """One DomainBed sweep -> OUT/results.jsonl; the StageResult's data: its rows, their table, the file."""
    out = Path(out)
    t0 = time.perf_counter()
    sw = resolve(cfg)
    cfg, sw.image_size_choice = cfg.sized(sw.arch, sw.weights)
    sw.threads = core_threads.apply(cfg.threads)
    runs, tests = plan_runs(cfg, sw.real_names, sw.synthetic_names)
    identity = {k: v for k, v in as_dict(cfg).items()
                if k not in ("seeds", "trials", "hparams_seed", "test_domains", "selection", "hp", "lr",
                             "batch_size", "workers")}
    identity.update({"backbone": sw.arch, "weights_sha256": sw.weights.sha256,
                     "data_fingerprint": data.fingerprint(sw.real), "hparam_overrides": sw.overrides,
                     "hparam_class": sw.hclass, "checkpoint_freq": sw.freq})
    sw.precision = cfg.train_precision()  # refused here, before the folder is made, if the device cannot run it
    with StageRun(out, "dg", identity, hint="more seeds, hyper-parameter draws or test domains may be added to a "
                                           "run; other changes need another --out") as run:
        finished = [spec for spec in runs if (out / "runs" / spec.key / "records.json").is_file()]
        run.log(describe_plan(cfg, runs, tests, len(finished)))
        if len(finished) < len(runs):
            sw.images(cfg)  # decoded once for every run of the sweep
        for spec in runs:
            if spec not in finished:
                _train_run(cfg, sw, spec, out, run)
            elif run.main:
                loop.clear(out / "runs" / spec.key / "checkpoint")  # killed after its records were written
        rows = _rows(cfg, sw, runs, tests, out)
        if run.main:
            kill_point("dg.before_results")
            done = {_row_key(r) for r in _read_results(out)}
            append_jsonl(out / "results.jsonl", [r for r in rows if _row_key(r) not in done])
            everything = sorted(_read_results(out), key=_row_order)
            write_jsonl(out / "results.jsonl", everything)
            run.finish()
        run.wait()
    from ...core.distributed import is_main_process
    from .collect import tables

    rows = _read_results(out)
    res = {"rows": rows, "table": tables(rows, selections=cfg.selection), "wall_seconds": time.perf_counter() - t0,
           "results": str(out / "results.jsonl")}
    return StageResult([f"dg: {len(rows)} result rows → {res['results']}"], tables=[res["table"]],
                       files={"results": res["results"]}, data=res, printed=is_main_process())


def _read_results(out: Path) -> list[dict[str, Any]]:
    f = out / "results.jsonl"
    return [effective_hparams(r) for r in read_jsonl(f, tolerate_torn_tail=True)] if f.is_file() else []


def _row_key(r: dict[str, Any]) -> tuple:
    return (r["label"], r["test_domain"], r["trial_seed"], r["hparams_seed"], r["selection"])


def _row_order(r: dict[str, Any]) -> tuple:
    return (r["trial_seed"], r["hparams_seed"], r["domain_index"], r["selection_index"])


def augmented(cfg: DGConfig, hparams: dict[str, Any], env: Env) -> bool:
    """--augment/--no-augment decide for every environment; by default DomainBed's rule: its
    `data_augmentation` hyper-parameter, for sources it augments (image folders, not digits)."""
    if cfg.augment is not None:
        return cfg.augment
    return bool(hparams["data_augmentation"]) and env.augmentable


@dataclass
class RunPlan:
    """What one run of the sweep is: its hyper-parameters and seed, its length and evaluation cadence, each
    environment's in/out split, what it trains on and validates on."""

    spec: RunSpec
    hparams: dict[str, Any]
    seed: int
    steps: int
    freq: int
    splits: dict[str, tuple[np.ndarray, np.ndarray]]
    train_envs: list[Env]
    val_envs: list[Env]
    leakage: dict[str, Any] | None = None  # the synthetic images the leakage guard kept and dropped


def plan_run(cfg: DGConfig, sw: Sweep, spec: RunSpec) -> RunPlan:
    hparams = {**hparams_for(cfg.algorithm, sw.hclass, spec.hparams_seed, spec.trial, sw.pretrained, cfg.swad),
               **sw.overrides}
    # DomainBed: each environment split in (train / evaluate) and out (validate) by seed_hash(trial, env_i).
    splits = {e.name: data.split(len(e.rows), cfg.holdout_fraction, seed_hash(spec.trial, i))
              for i, e in enumerate(sw.envs)}
    guard = leakage_guard(sw, spec, splits)
    names = train_env_names(cfg, spec, sw.real_names, sw.synthetic_names)
    train_envs = [e for e in sw.envs if e.name in names]
    for e in train_envs:
        if len(splits[e.name][0]) < 2:
            why = (f" once the leakage guard dropped the {guard['dropped']} synthetic image(s) guided by photos of "
                   f"{', '.join(spec.test_envs)}" if guard and guard["dropped"] and not e.real else "")
            raise AugurError(f"environment '{e.name}' has {len(splits[e.name][0])} training image(s){why}; each needs "
                             "at least 2")
    val_envs = [e for e in train_envs if len(splits[e.name][1])]
    if not val_envs and (averaging_of(cfg).needs_validation or "training-domain" in cfg.selection):
        raise AugurError(f"--holdout-fraction {cfg.holdout_fraction} holds out no image of any training environment: "
                         "training-domain validation has nothing to select on (raise it, or add images)")
    return RunPlan(spec, hparams, run_seed(cfg.seed, cfg.algorithm, spec), cfg.steps or N_STEPS, sw.freq, splits,
                   train_envs, val_envs, guard)


def leakage_guard(sw: Sweep, spec: RunSpec, splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, Any] | None:
    """No test-domain leakage: a synthetic image guided by a photo of a domain this run tests on is dropped from
    both its splits (it neither trains nor validates the run). The split itself is DomainBed's, drawn before, so
    the other images keep their split. Returns {kept, dropped} over the synthetic environments (None when no
    synthetic image was guided)."""
    kept = dropped = 0
    guided = False
    for e in sw.envs:
        if e.real or e.source_of is None:
            continue
        guided = True
        leak = np.isin(e.source_of, list(spec.test_envs))
        dropped += int(leak.sum())
        kept += int((~leak).sum())
        splits[e.name] = tuple(idx[~leak[idx]] for idx in splits[e.name])
    return {"kept": kept, "dropped": dropped, "test_domains": list(spec.test_envs)} if guided else None


def run_seed(seed: int, algorithm: str, spec: RunSpec) -> int:
    """A run's seed (its network's initialisation, its batches and augmentation). --seed 0 is DomainBed's sweep
    exactly (sweep.py: seed_hash(algorithm, test_envs, trial_seed, hparams_seed) per run); another --seed
    takes part in the hash, so it draws other runs for the same trials and hyper-parameters. The data split
    is the trial seed's alone, as in DomainBed."""
    if seed == 0:
        return seed_hash(algorithm, spec.test_envs, spec.trial, spec.hparams_seed)
    return seed_hash(seed, algorithm, spec.test_envs, spec.trial, spec.hparams_seed)



def build_learner(cfg: DGConfig, sw: Sweep, rp: RunPlan):
    """The run's network (seeded by the run), the algorithm around it, and SWAD around that when asked."""
    import torch

    torch.manual_seed(rp.seed)
    backbone = backbones.build(sw.arch, sw.weights, cfg.image_size)
    if cfg.lora:
        backbone = backbones.add_lora(backbone, sw.arch, cfg.lora_rank)
    algorithm = ALGORITHMS.get(cfg.algorithm)(backbone, len(sw.classes), len(rp.train_envs), rp.hparams)
    return averaging_of(cfg).wrap(algorithm, rp.hparams)


def train_stream(cfg: DGConfig, sw: Sweep, rp: RunPlan, world: tuple[int, int]):
    """`stream(start, stop)`: each step's minibatches, one per training environment (DomainBed's infinite
    loaders: sampling with replacement, class-balanced when asked), from the sweep's image store."""
    feeds = []
    for e in rp.train_envs:
        in_idx = rp.splits[e.name][0]
        weights = _balanced_weights(e.labels[in_idx]) if rp.hparams["class_balanced"] else None
        batches = InfiniteBatches(len(in_idx), int(rp.hparams["batch_size"]), rp.seed, ("env", e.name), world,
                                  weights=weights)
        feeds.append(sw.store.feed(e.rows[in_idx], batches, augment=augmented(cfg, rp.hparams, e)))

    def stream(start: int, stop: int):
        for batches in zip(*(f.stream(start, stop) for f in feeds)):
            yield list(batches)

    return stream


class Evaluator:
    """[correct, total] and the mean loss of every split (in, out) of every environment, counted on the
    device and read back once per evaluation."""

    def __init__(self, sw: Sweep, rp: RunPlan):
        self.store = sw.store
        self.rows = {(e.name, part): e.rows[rp.splits[e.name][k]] for e in sw.envs
                     for k, part in enumerate(("in", "out"))}
        self.batch = EVAL_BATCH if self.store.device.type == "cpu" else EVAL_BATCH_GPU

    def __call__(self, model) -> dict[str, Any]:
        with audit.phase():
            return self._evaluate(model)

    def _evaluate(self, model) -> dict[str, Any]:
        import torch

        sums = []
        for rows in self.rows.values():
            correct = loss = torch.zeros((), device=self.store.device, dtype=torch.float64)
            for x, y in self.store.eval_batches(rows, self.batch):
                logits = model.predict(x).float()
                correct = correct + (logits.argmax(1) == y).sum()
                loss = loss + torch.nn.functional.cross_entropy(logits, y, reduction="sum")
            sums.append(torch.stack([correct, loss]))
        values = torch.stack(sums).tolist() if sums else []
        result: dict[str, Any] = {"acc": {}, "loss": {}}
        for ((name, part), rows), (correct, loss) in zip(self.rows.items(), values):
            result["acc"].setdefault(name, {})[part] = [int(correct), len(rows)]
            result["loss"].setdefault(name, {})[part] = loss / max(len(rows), 1)
        return result


def _train_run(cfg: DGConfig, sw: Sweep, spec: RunSpec, out: Path, run: StageRun) -> None:
    """One run: plan it, build it, train it (resuming from its last checkpoint), write its records."""
    import torch

    rp = plan_run(cfg, sw, spec)
    averaging = averaging_of(cfg)
    learner = build_learner(cfg, sw, rp)
    stream = train_stream(cfg, sw, rp, run.world)
    evaluate = Evaluator(sw, rp)

    def on_checkpoint(model, step: int, record: dict[str, Any]) -> None:
        averaging.at_checkpoint(model, step, record, rp.val_envs)

    run_dir = out / "runs" / spec.key
    records = loop.run(learner, stream, total_steps=rp.steps, is_checkpoint=lambda s: s % rp.freq == 0,
                       ckpt=run_dir / "checkpoint", seed=rp.seed, precision=sw.precision, evaluate=evaluate,
                       progress=cfg.progress, desc=f"dg {cfg.algorithm} {spec.key}", on_checkpoint=on_checkpoint)
    result: dict[str, Any] = {
        "spec": {"test_envs": list(spec.test_envs), "trial": spec.trial, "hparams_seed": spec.hparams_seed},
        "train_envs": [e.name for e in rp.train_envs], "hparams": rp.hparams, "seed": rp.seed,
        "augmented_envs": [e.name for e in rp.train_envs if augmented(cfg, rp.hparams, e)],
        "steps": rp.steps, "checkpoint_freq": rp.freq,
        "steps_per_epoch": min(len(rp.splits[e.name][0]) / rp.hparams["batch_size"] for e in rp.train_envs),
        "data_config": sw.dc.as_dict(), "records": records,
        # freeze_bn is applied to BatchNorm layers: a backbone without any (a ViT) froze nothing
        "batchnorm": any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in learner.modules())}
    if rp.leakage is not None:
        result["leakage_guard"] = rp.leakage
    result.update(averaging.finish(learner, rp, stream, evaluate, records[-1]["step"]))
    if run.main:
        write_json(run_dir / "records.json", result)
        kill_point("dg.after_run")
        loop.clear(run_dir / "checkpoint")
    run.wait()


def _balanced_weights(labels: np.ndarray) -> np.ndarray:
    """misc.make_weights_for_balanced_classes: 1 / (count[y] * n_classes) per sample."""
    labels = np.asarray(labels)
    counts = {y: int((labels == y).sum()) for y in np.unique(labels)}
    return np.array([1.0 / (counts[y] * len(counts)) for y in labels])


def _rows(cfg: DGConfig, sw: Sweep, runs: list[RunSpec], tests: list[str], out: Path) -> list[dict[str, Any]]:
    real_names = sw.real_names
    results = {spec: read_json(out / "runs" / spec.key / "records.json") for spec in runs}
    label = label_of(cfg)
    device = pick_device()
    base = {"label": label, "algorithm": cfg.algorithm, "dataset": str(cfg.data), "setting": setting_of(cfg),
            "domains": real_names, "backbone": sw.arch, "weights": sw.weights.describe(),
            "weights_sha256": sw.weights.sha256, "image_size": cfg.image_size,
            "image_size_choice": sw.image_size_choice, "image_px": sw.image_px,
            "hparam_class": sw.hclass, "lora": cfg.lora, "lora_rank": cfg.lora_rank if cfg.lora else None,
            "swad": cfg.swad, "augment": cfg.augment,
            "synthetic": cfg.synthetic, "synthetic_envs": cfg.synthetic_envs if cfg.synthetic else None,
            "holdout_fraction": cfg.holdout_fraction, "device": device, "precision": sw.precision,
            "threads": torch_threads(),
            "threads_choice": sw.threads.why if sw.threads else None, "toolkit_version": __version__}
    regime, averaging = regime_of(cfg), averaging_of(cfg)
    rows = []
    for spec, res in results.items():
        row_tests = regime.row_tests(spec.test_envs, tests)  # none for a leave-one-out pair run: read through
        # the single run below
        records = averaging.candidates(res)
        for t in row_tests:
            picked: dict[str, Any] = {}
            if "training-domain" in cfg.selection:
                picked["training-domain"] = sel.training_domain(records, res["train_envs"], t)
            if "oracle" in cfg.selection:
                picked["oracle"] = sel.oracle(records, t)
            if "leave-one-out" in cfg.selection and regime.pairs:
                pairs = {v: results[RunSpec(tuple(sorted((t, v), key=real_names.index)), spec.trial, spec.hparams_seed)]
                         for v in real_names if v != t}
                picked["leave-one-out"] = averaging.leave_one_out(res, pairs, t)
            for method, row in picked.items():
                if row is None:
                    continue
                rows.append({**base, **row, **averaging.row_fields(res), "selection": method,
                             "selection_index": sel_index(method),
                             "test_domain": t, "domain_index": real_names.index(t),
                             "trial_seed": spec.trial, "seed": res["seed"], "hparams_seed": spec.hparams_seed,
                             "hparams": applied_hparams(res),
                             "train_domains": res["train_envs"],
                             "augmented_domains": res.get("augmented_envs", []), "steps": res["steps"],
                             "checkpoint_freq": res["checkpoint_freq"],
                             **({"leakage_guard": res["leakage_guard"]} if "leakage_guard" in res else {}),
                             "images_per_second": float(np.mean([r["images_per_second"] for r in res["records"]]))})
    return rows


def applied_hparams(res: dict[str, Any]) -> dict[str, Any]:
    """The run's hyper-parameters as applied, under DomainBed's keys: `data_augmentation` says whether any
    training environment was augmented, `freeze_bn` whether any BatchNorm layer was frozen (records written
    before 2026-12-07 do not say whether the backbone had BatchNorm: their freeze_bn stays as asked)."""
    hp = {**res["hparams"], "data_augmentation": bool(res.get("augmented_envs"))}
    if "freeze_bn" in hp and res.get("batchnorm") is False:
        hp["freeze_bn"] = False
    return hp


def sel_index(method: str) -> int:
    from .config import SELECTIONS

    return SELECTIONS.index(method)
