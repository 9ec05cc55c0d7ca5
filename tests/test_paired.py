"""Paired comparisons (core/paired.py, dg/compare.py, cl/compare.py) on hand-made inputs with known answers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from toolkit.core.errors import AugurError
from toolkit.core.paired import paired
from toolkit.stages.cl.compare import comparisons as cl_comparisons
from toolkit.stages.dg.collect import collect
from toolkit.stages.dg.compare import comparisons as dg_comparisons


def test_the_permutation_p_value_is_the_exact_sign_flip_count():
    # 4 equal differences: of the 2^4 sign patterns only all-plus and all-minus reach |mean| = 1
    r = paired([1, 1, 1, 1])
    assert (r.n, r.mean, r.low, r.high, r.exact) == (4, 1.0, 1.0, 1.0, True)
    assert r.p == pytest.approx(2 / 16)
    # |d| = .02 .01 .03 .01 .04 (sum .11): |sum| >= .09 when no sign or one of the two .01s is flipped, either way
    # round: 6 of 32 patterns
    r = paired([0.02, -0.01, 0.03, 0.01, 0.04])
    assert r.mean == pytest.approx(0.018)
    assert r.p == pytest.approx(6 / 32)
    assert r.reading() in ("interval includes 0", "above 0, but 5 pairs cannot reach p < 0.05")


def test_pairs_are_paired_a_constant_shift_under_large_spread_is_found():
    # The arms differ by +1 point on every unit while the units spread over 80 points: a paired test sees 8 equal
    # differences (p = 2/256); a test of the two arms as independent samples would see nothing (p near 1).
    base = np.array([0.1, 0.5, 0.9, 0.3, 0.7, 0.2, 0.8, 0.4])
    r = paired(base + 0.01 - base)
    assert r.p == pytest.approx(2 / 256)
    assert r.low == pytest.approx(0.01) and r.high == pytest.approx(0.01)
    assert r.reading() == "above 0"  # 8 pairs: p = 0.0078
    # three pairs can never give p < 0.05 (2/8 at best): the reading says so beside a narrow interval
    assert paired([0.01, 0.01, 0.01]).reading() == "above 0, but 3 pairs cannot reach p < 0.05"
    assert paired([-0.01, -0.02, -0.01, -0.03, -0.02, 0.001]).reading() == "below 0, but p > 0.05"


def test_the_bootstrap_interval_is_the_percentile_interval_of_resampled_means():
    # Two pairs, 0 and 1: a resample's mean is 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4, so the 2.5th and
    # 97.5th percentiles are 0 and 1
    r = paired([0.0, 1.0])
    assert (r.low, r.high) == (0.0, 1.0)
    assert r.reading() == "interval includes 0"
    # 100 pairs 0, .01, ..., .99: close to the normal interval mean ± 1.96 * sd / sqrt(n)
    d = np.arange(100) / 100
    r = paired(d)
    half = 1.96 * d.std() / 10
    assert r.low == pytest.approx(d.mean() - half, abs=0.01)
    assert r.high == pytest.approx(d.mean() + half, abs=0.01)
    assert not r.exact  # 2^100 patterns: 9,999 sampled
    assert r.p < 1e-3  # every difference >= 0: no sampled flip reaches the observed mean
    # the same input gives the same interval (a fixed seed)
    assert paired(d) == r


def test_one_pair_has_no_interval():
    r = paired([0.03])
    assert (r.n, r.low, r.high, r.p) == (1, None, None, 1.0)
    assert r.reading() == "one pair: no interval"


def _dg_row(arm, domain, trial, h, acc, selection="training-domain", algorithm="ERM"):
    synthetic = None if arm == "none" else f"/runs/x/{arm}"
    return {"label": algorithm + ("" if synthetic is None else "+synthetic(one)"), "algorithm": algorithm,
            "selection": selection, "test_domain": domain, "dataset": "digits", "trial_seed": trial,
            "hparams_seed": h, "val_acc": 0.5, "test_acc": acc, "backbone": "resnet18", "weights": "random",
            "synthetic": synthetic, "synthetic_envs": None if synthetic is None else "one",
            "setting": "leave-one-domain-out", "domains": ["0", "15"]}


def _dg_rows():
    # arm render is better by 2, 4, 6 points on domain 0 and by 1, 1, 1 on domain 15 (trials 0-2, draw 0)
    rows = []
    for t, (d0, d15) in enumerate([(0.02, 0.01), (0.04, 0.01), (0.06, 0.01)]):
        rows += [_dg_row("none", "0", t, 0, 0.5 + t / 10), _dg_row("render", "0", t, 0, 0.5 + t / 10 + d0),
                 _dg_row("none", "15", t, 0, 0.7 - t / 10), _dg_row("render", "15", t, 0, 0.7 - t / 10 + d15)]
    return rows


def test_dg_pairs_share_test_domain_trial_and_draw():
    rows = _dg_rows()
    # a row with no partner (trial 7 in one arm only, a draw the baseline lacks) makes no pair
    rows += [_dg_row("render", "0", 7, 0, 0.9), _dg_row("render", "0", 0, 3, 0.1)]
    base, by = dg_comparisons(rows)
    assert base == "none"
    lines = {c.measure: c for c in by["training-domain"]}
    assert list(lines) == ["0", "15", "Avg"]
    assert lines["0"].result.n == 3 and lines["0"].result.mean == pytest.approx(0.04)
    assert lines["0"].arm == "render" and lines["0"].baseline_mean == pytest.approx(0.6)
    assert lines["15"].result.mean == pytest.approx(0.01)
    # the average over domains per (trial, draw): (.02+.01)/2, (.04+.01)/2, (.06+.01)/2
    assert lines["Avg"].result.n == 3 and lines["Avg"].result.mean == pytest.approx(0.025)
    assert lines["15"].result.p == pytest.approx(2 / 8)  # three equal differences: the smallest p 3 pairs allow


def test_dg_collect_compare_prints_the_table_and_refuses_one_arm(tmp_path):
    f = tmp_path / "a" / "results.jsonl"
    f.parent.mkdir()
    f.write_text("".join(json.dumps(r) + "\n" for r in _dg_rows()))
    text = collect([tmp_path], compare="synthetic")
    assert "What the synthetic data changed" in text and "render vs none" in text
    assert "| ERM | render vs none | Avg | 3 | 60.0 | 62.5 | +2.5 |" in text
    assert "interval includes 0" in text or "above 0" in text
    one = tmp_path / "b" / "results.jsonl"
    one.parent.mkdir()
    one.write_text("".join(json.dumps(r) + "\n" for r in _dg_rows() if r["synthetic"] is None))
    with pytest.raises(AugurError, match="one arm only"):
        collect([one.parent], compare="synthetic")
    with pytest.raises(AugurError, match="--baseline nope: not one of the arms"):
        collect([tmp_path], compare="synthetic", baseline="nope")


def _cl_row(weights, order, seed, aia, last, fgt, strategy="ncm"):
    return {"strategy": strategy, "weights": weights, "backbone": "resnet18", "protocol": "B2-Inc2",
            "class_order": order, "seed": seed, "data": "digits", "final": True,
            "average_incremental_accuracy": aia, "last_accuracy": last, "average_forgetting": fgt}


def test_cl_pairs_share_strategy_class_order_and_seed_and_imagenet_is_the_baseline():
    rows = []
    for k, order in enumerate(["1993", "1", "2"]):
        rows += [_cl_row("random", order, 0, 0.3, 0.2, 0.4), _cl_row("imagenet (resnet18-imagenet)", order, 0,
                                                                     0.6 + k / 100, 0.5, 0.2),
                 _cl_row("pretrained:pretrain-abc", order, 0, 0.65 + k / 100, 0.5 + k / 50, 0.1)]
    base, lines = cl_comparisons(rows)
    assert base == "imagenet (resnet18-imagenet)"
    got = {(c.arm, c.measure): c.result for c in lines}
    assert got[("pretrained:pretrain-abc", "avg inc acc")].mean == pytest.approx(0.05)
    assert got[("pretrained:pretrain-abc", "last acc")].mean == pytest.approx(0.02)
    assert got[("pretrained:pretrain-abc", "forgetting")].mean == pytest.approx(-0.1)
    assert got[("random", "avg inc acc")].mean == pytest.approx(-0.31)
    assert got[("random", "avg inc acc")].n == 3
    base, _ = cl_comparisons(rows, baseline="random")
    assert base == "random"
    with pytest.raises(AugurError, match="one arm only"):
        cl_comparisons([r for r in rows if r["weights"] == "random"])


def test_cl_runs_that_differ_in_a_setting_are_neither_averaged_nor_paired_together():
    """fsa with petl=adapter and petl=ssf (or two learning rates) are two runs, not two class orders of one."""
    from toolkit.stages.cl.stage import table

    rows = []
    for petl, gain in (("adapter", 0.1), ("ssf", 0.2)):
        for order in ("1993", "1"):
            for weights, aia in (("random", 0.3), ("imagenet (x)", 0.3 + gain)):
                r = _cl_row(weights, order, 0, aia, aia, 0.1, strategy="fsa")
                rows.append({**r, "hparams": {"petl": petl, "M": 64}, "epochs": 2, "lora": False})
    rows.append({**_cl_row("random", "1993", 0, 0.5, 0.5, 0.1), "hparams": {}})
    text = table(rows)
    assert "fsa (petl=adapter)" in text and "fsa (petl=ssf)" in text and "ncm " in text and "(M=" not in text
    line = next(l for l in text.splitlines() if "fsa (petl=ssf)" in l and "imagenet" in l)
    assert "50.0 ± 0.0" in line  # 0.3 + 0.2 over its two orders, not mixed with the adapter's 0.4
    base, lines = cl_comparisons(rows)
    got = {(c.group, c.measure): c.result for c in lines}
    assert base == "imagenet (x)" and got[("fsa (petl=ssf)", "avg inc acc")].mean == pytest.approx(-0.2)
    assert got[("fsa (petl=adapter)", "avg inc acc")].mean == pytest.approx(-0.1)
    assert got[("fsa (petl=ssf)", "avg inc acc")].n == 2


def test_compare_from_the_command_line_and_its_bad_input_is_one_line(tmp_path):
    from click.testing import CliRunner

    from cli import main

    for name, rows in (("both", _dg_rows()), ("one", [r for r in _dg_rows() if r["synthetic"] is None])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = CliRunner().invoke(main, ["dg", "collect", str(tmp_path / "both"), "--compare", "synthetic"])
    assert res.exit_code == 0 and "| ERM | render vs none | 0 | 3 | 60.0 | 64.0 | +4.0 |" in res.output, res.output
    for args, code, fragment in (
            (["dg", "collect", str(tmp_path / "one"), "--compare", "synthetic"], 1, "one arm only (none)"),
            (["dg", "collect", str(tmp_path / "both"), "--baseline", "none"], 2, "--baseline needs --compare"),
            (["cl", "collect", str(tmp_path / "both"), "--baseline", "random"], 2, "--baseline needs --compare")):
        res = CliRunner().invoke(main, args)
        lines = res.output.strip().splitlines()
        assert res.exit_code == code and len(lines) == 1 and fragment in lines[0], res.output
