"""`augur dg`: DomainBed's loop, model selection, sweeps and collect_results tables, on real digits."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from cli import main
from helpers import assert_same_files, killed_at
from toolkit.core.errors import AugurError
from toolkit.core.files import read_json, read_jsonl
from toolkit.learn import data
from toolkit.stages.dg import selection as sel
from toolkit.stages.dg.collect import collect, format_mean, table
from toolkit.stages.dg.config import DGConfig
from toolkit.stages.dg.stage import RunSpec, plan_runs, run_dg

FAST = dict(steps=12, checkpoint_freq=4, image_size=16, batch_size=8, quiet=True, backbone="test_resnet")


def cfg(**kw) -> DGConfig:
    return DGConfig(**{**FAST, **kw})


@pytest.fixture(scope="module")
def three_domains(tmp_path_factory) -> Path:
    """A DomainBed-layout folder of real digits: three rotated domains, 12 images per class each."""
    root = tmp_path_factory.mktemp("digits3")
    ds = data.rotated_digits()
    for d in ds.domains[:3]:
        for c in range(10):
            idx = np.flatnonzero(d.labels == c)[:12]
            (root / f"rot{d.name}" / str(c)).mkdir(parents=True)
            for k, i in enumerate(idx):
                Image.fromarray(d.images[i]).save(root / f"rot{d.name}" / str(c) / f"{k}.png")
    return root


def record(step, accs):
    return {"step": step, "acc": {env: {"in": list(v[0]), "out": list(v[1])} for env, v in accs.items()}}


def test_selection_methods_on_hand_built_records():
    # env a and b train, t is the test domain; counts are [correct, total]
    recs = [record(0, {"a": ([5, 10], [6, 10]), "b": ([5, 10], [2, 10]), "t": ([3, 10], [1, 10])}),
            record(1, {"a": ([8, 10], [9, 10]), "b": ([8, 10], [7, 10]), "t": ([4, 10], [9, 10])}),
            record(2, {"a": ([9, 10], [9, 10]), "b": ([9, 10], [7, 10]), "t": ([7, 10], [2, 10])})]
    # training-domain: mean of the training environments' out-splits, environments averaged: step 1 (0.8) ties
    # step 2 (0.8); the first maximum is kept
    td = sel.training_domain(recs, ["a", "b"], "t")
    assert td["selected_step"] == 1 and td["val_acc"] == pytest.approx(0.8)
    # DomainBed reports the test domain's in-split (env{t}_in_acc); the whole domain is kept beside it
    assert td["test_acc"] == pytest.approx(0.4) and td["test_whole_acc"] == pytest.approx(13 / 20)
    # an environment too small to hold anything out (out-split [0, 0]) is left out of the mean, not made NaN
    tiny = [{**r, "acc": {**r["acc"], "s": {"in": [1, 3], "out": [0, 0]}}} for r in recs]
    td_tiny = sel.training_domain(tiny, ["a", "b", "s"], "t")
    assert td_tiny["selected_step"] == 1 and td_tiny["val_acc"] == pytest.approx(0.8)
    assert td_tiny["validation_domains"] == ["a", "b"]
    orc = sel.oracle(recs, "t")  # last checkpoint; val = the test domain's out-split
    assert orc["selected_step"] == 2 and orc["val_acc"] == pytest.approx(0.2) and orc["test_acc"] == pytest.approx(0.7)
    # leave-one-out: runs holding out {t, a} and {t, b}; val = mean of a's and b's in-split accuracy there
    pair_a = [record(s, {"a": ([v, 10], [0, 10]), "b": ([0, 10], [0, 10]), "t": ([0, 10], [0, 10])})
              for s, v in ((0, 2), (1, 9), (2, 5))]
    pair_b = [record(s, {"a": ([0, 10], [0, 10]), "b": ([v, 10], [0, 10]), "t": ([0, 10], [0, 10])})
              for s, v in ((0, 2), (1, 3), (2, 8))]
    loo = sel.leave_one_out(recs, {"a": pair_a, "b": pair_b}, "t")
    assert loo["selected_step"] == 2 and loo["val_acc"] == pytest.approx(0.65)  # (0.5+0.8)/2 beats (0.9+0.3)/2


def test_collect_prints_domainbeds_mean_and_standard_error():
    data_ = [0.8, 0.7, 0.9]
    mean, text = format_mean(data_)
    err = 100 * np.std(np.array(data_) / np.sqrt(3))
    assert mean == pytest.approx(80.0) and text == f"80.0 ± {err:.1f}" and f"{err:.1f}" == "4.7"
    base = {"label": "ERM", "dataset": "digits", "domains": ["0", "15"], "backbone": "resnet18", "weights": "random",
            "selection": "training-domain"}
    rows = [{**base, "test_domain": "0", "trial_seed": t, "hparams_seed": h, "val_acc": v, "test_acc": a}
            for t, h, v, a in ((0, 0, 0.5, 0.8), (0, 1, 0.9, 0.6), (1, 0, 0.7, 0.7), (2, 0, 0.7, 0.9))]
    md = table(rows, "training-domain", "markdown")
    # trial 0 keeps the draw with the best validation accuracy (0.6), so the cell is over 0.6, 0.7, 0.9;
    # domain 15 has no result: X, and Avg is X
    _, cell = format_mean([0.6, 0.7, 0.9])
    assert f"| ERM | {cell} | X | X |" in md
    assert "model selection method: training-domain validation set" in md
    tex = table(rows, "training-domain", "latex")
    assert "\\begin{tabular}" in tex and "$\\pm$" in tex and "\\textbf{Avg}" in tex


def test_plan_covers_leave_one_out_pairs_once(three_domains):
    runs, tests = plan_runs(cfg(data=str(three_domains), selection=["leave-one-out"]), ["rot0", "rot15", "rot30"])
    singles = [r for r in runs if len(r.test_envs) == 1]
    pairs = [r for r in runs if len(r.test_envs) == 2]
    assert len(singles) == 3 and len(pairs) == 3 and tests == ["rot0", "rot15", "rot30"]
    runs, _ = plan_runs(cfg(data=str(three_domains), selection=["training-domain"], trials=2,
                            hparams_seed=[0, 1]), ["rot0", "rot15", "rot30"])
    assert len(runs) == 3 * 2 * 2 and all(len(r.test_envs) == 1 for r in runs)


@pytest.fixture(scope="module")
def sweep(three_domains, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    return out, run_dg(cfg(data=str(three_domains), test_domains=["rot0", "rot30"],
                           selection=["training-domain", "leave-one-out", "oracle"]), out).data


def test_sweep_rows_and_records(sweep, three_domains):
    out, res = sweep
    rows = res["rows"]
    assert {(r["test_domain"], r["selection"]) for r in rows} == {
        (t, s) for t in ("rot0", "rot30") for s in ("training-domain", "leave-one-out", "oracle")}
    for r in rows:
        # a folder of 32 px digits from random init: DomainBed's small-image regime, whatever the layout
        assert r["test_domain"] not in r["train_domains"] and r["hparams"]["lr"] == 1e-3
        assert r["hparam_class"] == "mnist-cnn" and r["image_px"] == 32
        assert r["hparams"]["batch_size"] == 8 and r["steps"] == 12 and r["checkpoint_freq"] == 4
        assert 0.0 <= r["test_acc"] <= 1.0 and r["selected_step"] in (0, 4, 8, 11)
    # leave-one-out trained a run per pair of real domains; its rows read them
    keys = sorted(p.name for p in (out / "runs").iterdir())
    assert len(keys) == 2 + 3 and not any((out / "runs" / k / "checkpoint").exists() for k in keys)
    rec = read_json(out / "runs" / keys[0] / "records.json")
    # DomainBed's loop: evaluation at step 0, every checkpoint_freq steps, and the last step
    assert [r["step"] for r in rec["records"]] == [0, 4, 8, 11]
    for r in rec["records"]:
        for env in ("rot0", "rot15", "rot30"):
            n_in, n_out = r["acc"][env]["in"][1], r["acc"][env]["out"][1]
            assert n_out == int(120 * 0.2) and n_in == 120 - n_out  # every environment split 80/20
    # test_acc is DomainBed's: the test domain's in-split; test_whole_acc the in + out splits
    td = next(r for r in rows if r["selection"] == "training-domain" and r["test_domain"] == "rot0")
    run = read_json(out / "runs" / RunSpec(("rot0",), 0, 0).key / "records.json")
    chosen = next(r for r in run["records"] if r["step"] == td["selected_step"])
    (ci, ni), (co, no) = chosen["acc"]["rot0"]["in"], chosen["acc"]["rot0"]["out"]
    assert td["test_acc"] == pytest.approx(ci / ni) and td["test_whole_acc"] == pytest.approx((ci + co) / (ni + no))
    assert "Algorithm" in res["table"] and "X" not in res["table"].split("leave-one-domain-out")[1].splitlines()[1]


def test_more_seeds_extend_the_sweep_and_collect(sweep, three_domains):
    out, first = sweep
    again = run_dg(cfg(data=str(three_domains), test_domains=["rot0", "rot30"], seeds=[0, 1],
                       selection=["training-domain"]), out).data
    assert len(again["rows"]) == len(first["rows"]) + 2  # trial 1: one training-domain row per test domain
    text = collect([out])
    assert text.startswith(f"Total records: {len(again['rows'])}")
    res = CliRunner().invoke(main, ["dg", "collect", str(out), "--latex"])
    assert res.exit_code == 0 and "\\begin{tabular}" in res.output
    with pytest.raises(AugurError, match="dg run with other settings"):
        run_dg(cfg(data=str(three_domains), steps=13), out)


def test_synthetic_environments_per_domain_and_one(three_domains, tmp_path):
    synth = tmp_path / "synth"
    for d in ("neon", "mosaic"):
        for c in range(10):
            (synth / d / str(c)).mkdir(parents=True)
            img = np.random.RandomState(c).randint(0, 255, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(img).save(synth / d / str(c) / "a.png")
            Image.fromarray(255 - img).save(synth / d / str(c) / "b.png")
    for mode, envs in (("one", ["synthetic"]), ("per-domain", ["synthetic/mosaic", "synthetic/neon"])):
        out = tmp_path / mode
        res = run_dg(cfg(data=str(three_domains), synthetic=str(synth), synthetic_envs=mode, test_domains=["rot0"],
                         selection=["training-domain"]), out).data
        (row,) = res["rows"]
        assert row["train_domains"] == ["rot15", "rot30", *envs] and row["label"] == f"ERM+synthetic({mode})"
    # a rendered domain of 3 images holds none out (int(3 * 0.2) = 0): it trains, and validation skips it
    (synth / "sketch" / "0").mkdir(parents=True)
    for k in range(3):
        Image.fromarray(np.full((16, 16, 3), 40 * k, np.uint8)).save(synth / "sketch" / "0" / f"{k}.png")
    res = run_dg(cfg(data=str(three_domains), synthetic=str(synth), synthetic_envs="per-domain",
                     test_domains=["rot0"], selection=["training-domain"]), tmp_path / "tiny").data
    (row,) = res["rows"]
    assert "synthetic/sketch" in row["train_domains"] and "synthetic/sketch" not in row["validation_domains"]
    assert row["validation_domains"] == ["rot15", "rot30", "synthetic/mosaic", "synthetic/neon"]
    assert 0 <= row["val_acc"] <= 1
    with pytest.raises(AugurError, match="holds out no image"):
        run_dg(cfg(data=str(three_domains), synthetic=str(synth), synthetic_envs="per-domain", data_free=True,
                   holdout_fraction=0.01, selection=["training-domain"]), tmp_path / "noval")
    ss = run_dg(cfg(data=str(three_domains), synthetic=str(synth), single_source="rot15",
                    selection=["training-domain", "oracle"]), tmp_path / "ss").data
    assert sorted({r["test_domain"] for r in ss["rows"]}) == ["rot0", "rot30"]
    assert all(r["train_domains"] == ["rot15", "synthetic"] for r in ss["rows"])
    df = run_dg(cfg(data=str(three_domains), synthetic=str(synth), data_free=True, algorithm="CORAL",
                    synthetic_envs="per-domain", selection=["training-domain"]), tmp_path / "df").data
    assert len(df["rows"]) == 3 and all(r["train_domains"] == ["synthetic/mosaic", "synthetic/neon", "synthetic/sketch"]
                                     for r in df["rows"])


def test_swad_averages_over_the_loss_valley(three_domains, tmp_path):
    res = run_dg(cfg(data=str(three_domains), swad=True, steps=16, checkpoint_freq=2, test_domains=["rot0"],
                     selection=["training-domain"], hp={"swad_n_converge": 2, "swad_n_tolerance": 3}),
                 tmp_path / "s").data
    (row,) = res["rows"]
    assert row["label"] == "ERM+SWAD" and row["selection"] == "training-domain"
    run = read_json(tmp_path / "s" / "runs" / RunSpec(("rot0",), 0, 0).key / "records.json")
    start, end = run["swad"]["averaged_steps"]
    assert 0 <= start <= end <= 15 and row["test_acc"] == pytest.approx(sel.acc(run["swad"], "rot0", "in"))


def test_swad_re_estimates_batchnorm_statistics_as_a_cumulative_average():
    """SWAD (swa_utils.update_bn): the averaged weights' BatchNorm statistics are recomputed from training
    batches, each batch weighing the same (momentum None): the running mean is the mean of the batch means,
    the running variance the mean of the batches' unbiased variances; momentum and mode come back."""
    import torch.nn as nn

    from toolkit.stages.dg.swad import update_bn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm2d(3, momentum=0.3)

        def predict(self, x):
            return self.bn(x)

    net = Net().eval()
    net.bn.running_mean.fill_(5.0)  # stale statistics, as averaged weights carry
    g = torch.Generator().manual_seed(0)
    batches = [[(torch.randn(4, 3, 5, 5, generator=g) * (k + 1) + k, torch.zeros(4))] for k in range(3)]
    update_bn(net, iter(batches), torch.device("cpu"))
    xs = [b[0][0] for b in batches]
    means = torch.stack([x.mean(dim=(0, 2, 3)) for x in xs]).mean(0)
    variances = torch.stack([x.transpose(0, 1).reshape(3, -1).var(1, unbiased=True) for x in xs]).mean(0)
    assert torch.allclose(net.bn.running_mean, means, atol=1e-5)
    assert torch.allclose(net.bn.running_var, variances, atol=1e-4)
    assert net.bn.momentum == 0.3 and not net.training


def test_swad_loss_valley_rules():
    """LossValley: converge when the oldest of n_converge segments has the lowest loss; average segments
    while the smoothed minimum stays under the threshold; stop when it rises above."""
    import torch.nn as nn

    from toolkit.stages.dg.swad import SWAD

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))

        def optimizers(self):
            return {}

        def update(self, minibatches):
            with torch.no_grad():
                self.w += 1.0
            return {}

    def run(losses: dict[int, float]) -> SWAD:
        sw = SWAD(Tiny(), {"swad_n_converge": 3, "swad_n_tolerance": 3, "swad_tolerance_ratio": 0.3})
        for step in range(max(losses) + 1):
            sw.current_step = step
            sw.update([])  # after step s the weight is s + 1
            if step in losses:
                sw.evaluated(step, losses[step])
        return sw

    # Evaluations after every second step. Segments average the weights since the last evaluation:
    # steps 0-1 -> 1.5, 2-3 -> 3.5, 4-5 -> 5.5, 6-7 -> 7.5, 8-9 -> 9.5, ...
    sw = run({1: 1.0, 3: 0.5, 5: 0.55, 7: 0.6, 9: 5.0})
    # converged when the oldest of the last three segments (ending at step 3) had the lowest loss
    assert sw.meta["converge_step"] == 3
    assert sw.meta["threshold"] == pytest.approx(np.mean([0.5, 0.55, 0.6]) * 1.3)
    # at step 9 the window's minimum (0.55) is still under the threshold: the valley lives, segment 4-5 joined
    assert not sw.meta["dead_valley"] and sw.final.item() == pytest.approx(5.5)
    # the end drains the window while its minimum stays under the threshold: 6-7 joins, 8-9 (5.0) does not
    assert sw.final_weights().item() == pytest.approx(np.mean([5.5, 7.5])) == sw.final_weights().item()
    assert sw.final_range() == [4, 7]
    # three high losses in the window: the valley dies, training stops, the average is what it held
    dead = run({1: 1.0, 3: 0.5, 5: 0.55, 7: 0.6, 9: 5.0, 11: 6.0, 13: 7.0})
    assert dead.meta["dead_valley"] and dead.stop_training
    assert dead.final_weights().item() == pytest.approx(np.mean([5.5, 7.5])) and dead.final_range() == [4, 7]
    # never converged (the loss kept falling): the last segment
    falling = run({1: 1.0, 3: 0.9, 5: 0.8, 7: 0.7})
    assert falling.meta["converge_step"] is None and falling.final_weights().item() == pytest.approx(7.5)


def test_resume_after_kill_is_exact(three_domains, tmp_path):
    args = ["dg", "--data", str(three_domains), "--test-domains", "rot15", "--steps", "40", "--checkpoint-freq", "5",
            "--image-size", "16", "--batch-size", "8", "--selection", "training-domain,oracle", "--quiet"]
    ref = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "ref")])
    assert ref.exit_code == 0, ref.output
    out = tmp_path / "killed"
    key = RunSpec(("rot15",), 0, 0).key
    ckpt = out / "runs" / key / "checkpoint"
    killed_at([sys.executable, "-m", "cli", *args, "--out", str(out)], "loop.after_checkpoint:3")  # step 10 saved
    assert "step-000000010" in [p.name for p in ckpt.glob("step-*")]
    assert not (out / "results.jsonl").exists()
    res = CliRunner().invoke(main, [*args, "--out", str(out)])
    assert res.exit_code == 0, res.output
    # every file byte for byte (timing fields aside): results, every checkpoint record, nothing left over
    assert_same_files(tmp_path / "ref", out)


def test_hyperparameters_are_typed_and_recorded(three_domains, tmp_path):
    bad = CliRunner().invoke(main, ["dg", "--data", str(three_domains), "--algorithm", "CORAL", "--hp", "mmd_gamma=lots",
                                    "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "mmd_gamma" in bad.output and len(bad.output.strip().splitlines()) == 1
    bad = CliRunner().invoke(main, ["dg", "--data", str(three_domains), "--hp", "mmd_gamma=0.5", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "has no hyper-parameter 'mmd_gamma'" in bad.output
    res = run_dg(cfg(data=str(three_domains), algorithm="CORAL", hp={"mmd_gamma": 1e4}, lr=5e-4, test_domains=["rot0"],
                     selection=["training-domain"]), tmp_path / "ok").data
    (row,) = res["rows"]
    assert row["hparams"]["mmd_gamma"] == 1e4 and row["hparams"]["lr"] == 5e-4 and row["algorithm"] == "CORAL"


def test_the_hyperparameter_regime_follows_the_weights_and_the_image_size(tmp_path):
    """DomainBed pairs small images with its MNIST CNN from scratch (lr 1e-3, batch 64) and pretrained weights
    with lr 5e-5, batch 32: the same digits get one or the other by --weights, and --hp still overrides."""
    base = dict(backbone="efficientnet_lite0", test_domains=["0"], steps=1, checkpoint_freq=1, image_size=16,
                selection=["training-domain"], batch_size=None)
    rows = {}
    for name, extra in (("none", {}), ("imagenet", {"weights": "imagenet"}),
                        ("override", {"weights": "imagenet", "hp": {"lr": 2e-4, "batch_size": 4}})):
        (rows[name],) = run_dg(DGConfig(**{**FAST, **base, **extra}), tmp_path / name).data["rows"]
    assert (rows["none"]["hparams"]["lr"], rows["none"]["hparams"]["batch_size"]) == (1e-3, 64)
    assert rows["none"]["hparam_class"] == "mnist-cnn" and not rows["none"]["hparams"]["freeze_bn"]
    assert (rows["imagenet"]["hparams"]["lr"], rows["imagenet"]["hparams"]["batch_size"]) == (5e-5, 32)
    assert rows["imagenet"]["hparam_class"] == "resnet" and rows["imagenet"]["hparams"]["freeze_bn"]
    assert (rows["override"]["hparams"]["lr"], rows["override"]["hparams"]["batch_size"]) == (2e-4, 4)
    listing = CliRunner().invoke(main, ["dg", "--list"]).output
    assert "mnist-cnn (" in listing and "resnet (" in listing and "lr: float = 5e-05" in listing
    assert "lr: float = 0.001" in listing


def test_augmentation_follows_domainbed_digits_never_folders_yes(three_domains, tmp_path):
    """DomainBed augments its image folders and never RotatedMNIST: a flip would mirror a digit and reverse its
    rotation. The built-in digits train on exactly the stored images; a folder is augmented unless it says
    otherwise; --augment / --no-augment decide for every environment."""
    from toolkit.stages.dg.stage import augmented, resolve

    def first_batch(c):
        sw = resolve(c)
        sw.images(c)
        env = next(e for e in sw.envs if e.name not in c.test_domains)
        return sw, env, augmented(c, {"data_augmentation": True}, env)

    digits = cfg(test_domains=["0"])
    sw, env, aug = first_batch(digits)
    assert not aug and not sw.real.augment
    from toolkit.learn.loaders import InfiniteBatches

    feed = sw.store.feed(env.rows, InfiniteBatches(len(env.rows), 8, 0, "x"), augment=aug)
    x, y = next(feed.stream(0, 1))
    keys = InfiniteBatches(len(env.rows), 8, 0, "x").batch(0)
    stored, _ = sw.store.gather(env.rows[[k[0] for k in keys]])
    assert torch.equal(x, sw.store.augment.normalize(stored))  # no flip, no crop, no jitter
    # the same feed told to augment changes the pixels (the augmentation itself: tests/test_augment.py)
    x_aug, _ = next(sw.store.feed(env.rows, InfiniteBatches(len(env.rows), 8, 0, "x"), augment=True).stream(0, 1))
    assert not torch.equal(x_aug, x)
    assert first_batch(cfg(data=str(three_domains), test_domains=["rot0"]))[2]  # a folder: augmented
    assert first_batch(cfg(test_domains=["0"], augment=True))[2]  # forced
    assert not first_batch(cfg(data=str(three_domains), test_domains=["rot0"], augment=False))[2]
    marked = tmp_path / "marked"
    import shutil

    shutil.copytree(three_domains, marked)
    (marked / "augur-dataset.json").write_text('{"augment": false}')
    assert not first_batch(cfg(data=str(marked), test_domains=["rot0"]))[2]
    (marked / "augur-dataset.json").write_text('{"augment": "no"}')
    with pytest.raises(AugurError, match="'augment' must be true or false"):
        resolve(cfg(data=str(marked), test_domains=["rot0"]))
    # the rows record it
    res = run_dg(cfg(data=str(three_domains), test_domains=["rot0"], selection=["training-domain"], steps=2,
                     checkpoint_freq=1), tmp_path / "rows").data
    (row,) = res["rows"]
    assert row["augment"] is None and row["augmented_domains"] == ["rot15", "rot30"]
    assert row["hparams"]["data_augmentation"] is True
    (row,) = run_dg(cfg(test_domains=["0"], selection=["training-domain"], steps=2, checkpoint_freq=1),
                    tmp_path / "digits").data["rows"]
    assert row["augmented_domains"] == []
    # DomainBed's key records what was applied: the digits were not augmented (the hparam asked for it)
    assert row["hparams"]["data_augmentation"] is False
    # a results.jsonl written before this was recorded (the requested value) is migrated on read
    from toolkit.core.files import write_jsonl

    old = tmp_path / "digits" / "results.jsonl"
    write_jsonl(old, [{**r, "hparams": {**r["hparams"], "data_augmentation": True}} for r in read_jsonl(old)])
    res = run_dg(cfg(test_domains=["0"], selection=["training-domain"], steps=2, checkpoint_freq=1),
                 tmp_path / "digits").data
    assert [r["hparams"]["data_augmentation"] for r in res["rows"]] == [False]
    assert [r["hparams"]["data_augmentation"] for r in read_jsonl(old)] == [False]  # rewritten as applied
    from toolkit.stages.dg.collect import effective_hparams

    assert effective_hparams({"hparams": {"data_augmentation": True}, "augmented_domains": []})["hparams"] == {
        "data_augmentation": False}


def test_seed_takes_part_in_every_runs_seed_and_zero_is_domainbeds_sweep():
    """`--seed 0` is DomainBed's sweep.py seed for a run, seed_hash(algorithm, test_envs, trial, hparams_seed);
    another --seed draws other runs (it is no silent no-op); the data split stays the trial seed's."""
    from toolkit.stages.dg.hparams import seed_hash
    from toolkit.stages.dg.stage import run_seed

    spec = RunSpec(("0",), 1, 0)
    assert run_seed(0, "ERM", spec) == seed_hash("ERM", ("0",), 1, 0)
    assert len({run_seed(s, "ERM", spec) for s in (0, 1, 2)}) == 3
    assert run_seed(1, "ERM", spec) == run_seed(1, "ERM", RunSpec(("0",), 1, 0))


def test_swad_evaluates_at_its_own_cadence_and_works_with_every_selection(three_domains, tmp_path):
    """SWAD's code evaluates every 200 steps on image folders (DomainBed: 300) and 100 on small images; each
    selection reads the averaged model, leave-one-out through the pair runs' averaged models."""
    from PIL import Image

    from toolkit.stages.dg.stage import checkpoint_freq

    assert checkpoint_freq(cfg(checkpoint_freq=None), 227) == 300
    assert checkpoint_freq(cfg(checkpoint_freq=None, swad=True), 227) == 200
    assert checkpoint_freq(cfg(checkpoint_freq=None, swad=True), 28) == checkpoint_freq(cfg(checkpoint_freq=None), 28) == 100
    assert checkpoint_freq(cfg(checkpoint_freq=7, swad=True), 227) == 7
    large = tmp_path / "large"
    for d in range(3):
        for c in range(2):
            (large / f"d{d}" / str(c)).mkdir(parents=True)
            for k in range(5):
                arr = np.random.RandomState(100 * d + 10 * c + k).randint(0, 255, (40, 40, 3), dtype=np.uint8)
                Image.fromarray(arr).save(large / f"d{d}" / str(c) / f"{k}.png")
    # 250 steps: SWAD's cadence evaluates at 200 and the last step, DomainBed's (300) at the last step alone
    # (the cadence is the loop's, whatever the network: timm's 0.37M-parameter test ResNet runs them)
    for swad, steps in ((True, [0, 200, 249]), (False, [0, 249])):
        out = tmp_path / f"cadence-{swad}"
        run_dg(cfg(data=str(large), swad=swad, steps=250, checkpoint_freq=None, batch_size=4, test_domains=["d0"],
                   selection=["training-domain"], backbone="test_resnet"), out)
        (run,) = [read_json(p) for p in out.glob("runs/*/records.json")]
        assert [r["step"] for r in run["records"]] == steps and run["checkpoint_freq"] == (200 if swad else 300)
    res = run_dg(cfg(data=str(three_domains), swad=True, steps=8, checkpoint_freq=2, test_domains=["rot0"],
                     selection=["training-domain", "leave-one-out", "oracle"],
                     hp={"swad_n_converge": 2, "swad_n_tolerance": 2, "swad_bn_steps": 2}, backbone="test_resnet"),
                 tmp_path / "loo").data
    rows = {r["selection"]: r for r in res["rows"]}
    assert set(rows) == {"training-domain", "leave-one-out", "oracle"}
    main_run = read_json(tmp_path / "loo" / "runs" / RunSpec(("rot0",), 0, 0).key / "records.json")["swad"]
    pairs = {v: read_json(tmp_path / "loo" / "runs" / RunSpec(("rot0", v), 0, 0).key / "records.json")["swad"]
             for v in ("rot15", "rot30")}
    for r in rows.values():
        assert r["test_acc"] == pytest.approx(sel.acc(main_run, "rot0", "in")) and "swad_steps" in r
    assert rows["oracle"]["val_acc"] == pytest.approx(sel.acc(main_run, "rot0", "out"))
    assert rows["leave-one-out"]["val_acc"] == pytest.approx(np.mean([sel.acc(pairs[v], v, "in") for v in pairs]))


def test_the_sweep_says_how_many_runs_it_trains(three_domains, tmp_path):
    """No silent multiplication of work: the default selections share one run per test domain; leave-one-out
    asks for the pairs, and says so."""
    res = CliRunner().invoke(main, ["dg", "--test-domains", "0", "--steps", "2", "--checkpoint-freq", "1",
                                    "--image-size", "16", "--batch-size", "8", "--quiet", "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    assert "dg: 1 run (1 test domain x 1 trial x 1 hparams draw)" in res.stderr
    assert {r["selection"] for r in read_jsonl(tmp_path / "a" / "results.jsonl")} == {"training-domain", "oracle"}
    runs, _ = plan_runs(cfg(data=str(three_domains), selection=["leave-one-out"], trials=2),
                        ["rot0", "rot15", "rot30"])
    from toolkit.stages.dg.stage import describe_plan

    assert describe_plan(cfg(selection=["leave-one-out"], trials=2), runs, ["rot0", "rot15", "rot30"], 2) == (
        "dg: 12 runs (3 test domains x 2 trials x 1 hparams draw, + 3 pairs of domains for leave-one-domain-out x "
        "2 trials x 1 hparams draw); 2 already done")


def test_freeze_bn_is_recorded_as_applied(tmp_path):
    """DomainBed's freeze_bn freezes BatchNorm layers: a row says true only where the backbone had some (a
    ResNet), false for one without (a ViT, LayerNorm only), whatever was asked."""
    import torch

    from toolkit.stages.dg.stage import build_learner, plan_run, resolve

    rows = {}
    for arch, size in (("resnet18", 16), ("vit_small", 32)):
        c = cfg(backbone=arch, image_size=size, hp={"freeze_bn": True}, test_domains=["0"],
                selection=["training-domain"], steps=1, checkpoint_freq=1)
        (rows[arch],) = run_dg(c, tmp_path / arch).data["rows"]
        sw = resolve(c)
        sw.images(c)
        learner = build_learner(c, sw, plan_run(c, sw, RunSpec(("0",), 0, 0)))
        has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in learner.modules())
        assert rows[arch]["hparams"]["freeze_bn"] is has_bn
    assert rows["resnet18"]["hparams"]["freeze_bn"] is True and rows["vit_small"]["hparams"]["freeze_bn"] is False
