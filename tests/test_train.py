"""pretrain and dg on real data: RotatedDigits (scikit-learn's digits) and images from the tiny render model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cli import main
from conftest import accelerate_launch, run_then_kill
from toolkit import backbones, data
from toolkit.dg import DGConfig, run_dg
from toolkit.errors import AugurError
from toolkit.fileio import read_jsonl, sha256_file, write_jsonl
from toolkit.pretrain import pretrain
from toolkit.train import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
FAST = dict(image_size=16, batch_size=64, progress=False)


def tcfg(**kw) -> TrainConfig:
    return TrainConfig(**{**FAST, **kw})


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A small rendered dataset whose classes are the digits' (the tiny model draws noise)."""
    from toolkit import models
    from toolkit.render import RenderConfig, render

    models.ensure("tiny-lcm")
    root = tmp_path_factory.mktemp("synth")
    rows = [{"id": f"{c}-{d}", "class": str(c), "domain": d, "prompt": f"the digit {c}, {d}"}
            for c in range(10) for d in ("neon", "mosaic")]
    write_jsonl(root / "prompts.jsonl", rows)
    render(root / "prompts.jsonl", root / "images", RenderConfig(progress=False, batch_size=10))
    return root / "images"


def test_rotated_digits_protocol():
    ds = data.rotated_digits()
    assert ds.names == ["0", "15", "30", "45", "60", "75"] and ds.classes == [str(i) for i in range(10)]
    assert sum(len(d.labels) for d in ds.domains) == 1797
    assert all(d.images[0].shape == (32, 32) for d in ds.domains)


def test_pretrain_lora_saves_and_reloads_identically(tmp_path):
    out = tmp_path / "bb"
    card = pretrain("digits", out, backbone="resnet18", cfg=tcfg(epochs=1, lora=True))
    assert card["lora"] and card["head"].startswith("discarded") and card["steps"] == 29 and card["seed"] == 0
    assert card["files"]["backbone.safetensors"] == sha256_file(out / "backbone.safetensors")
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    merged = backbones.load_pretrained(out).eval()
    rebuilt = backbones.load_pretrained(out, from_adapter=True).eval()
    x = torch.randn(8, 3, 16, 16)
    with torch.no_grad():
        a, b = merged(x), rebuilt(x)
    assert a.shape == (8, 512)
    assert torch.allclose(a, b, atol=1e-5)
    # BatchNorm statistics moved during training and were saved: they are not the init values.
    fresh = backbones.create("resnet18")
    assert not torch.equal(fresh.bn1.running_mean, merged.bn1.running_mean)
    with pytest.raises(AugurError, match="already exists"):
        pretrain("digits", out, cfg=tcfg(epochs=1))


@pytest.fixture(scope="module")
def lodo(tmp_path_factory):
    out = tmp_path_factory.mktemp("lodo")
    return out, run_dg("digits", out, DGConfig(train=tcfg(epochs=3), seeds=(0,)))


def test_leave_one_domain_out_beats_chance_on_every_angle(lodo):
    out, res = lodo
    rows = res["rows"]
    assert sorted(r["test_domain"] for r in rows) == sorted(["0", "15", "30", "45", "60", "75"])
    for r in rows:
        assert r["test_domain"] not in r["train_domains"]
        assert r["selection"] == "training-domain validation"
        assert r["test_acc"] >= 0.3, r  # chance is 0.1
    lines = res["table"].splitlines()
    assert lines[0].split()[:2] == ["Algorithm", "0"] and lines[0].split()[-1] == "Avg"
    assert lines[1].startswith("ERM") and "±" in lines[1]


def test_dg_run_is_resumed_not_redone(lodo):
    out, res = lodo
    again = run_dg("digits", out, DGConfig(train=tcfg(epochs=3), seeds=(0,)))
    assert again["rows"] == res["rows"]


def test_dg_resume_after_kill_is_exact(tmp_path):
    args = ["dg", "--test-domains", "75", "--epochs", "3", "--image-size", "16", "--quiet"]
    ref = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "ref")])
    assert ref.exit_code == 0, ref.output
    out = tmp_path / "killed"
    run_then_kill([sys.executable, "-m", "cli", *args, "--out", str(out)],
                  lambda: bool(list(out.glob("trials/*/progress.json"))))
    (progress,) = out.glob("trials/*/progress.json")
    assert 1 <= json.loads(progress.read_text())["epoch"] < 3
    assert not (out / "results.jsonl").exists()
    res = CliRunner().invoke(main, [*args, "--out", str(out)])
    assert res.exit_code == 0, res.output
    a, b = read_jsonl(tmp_path / "ref" / "results.jsonl"), read_jsonl(out / "results.jsonl")
    strip = lambda rows: [{k: v for k, v in r.items() if k != "images_per_second"} for r in rows]  # noqa: E731
    assert strip(a) == strip(b)


def test_single_source_and_data_free_with_rendered_domains(synthetic, tmp_path):
    res = run_dg("digits", tmp_path / "ss", DGConfig(single_source="0", synthetic=synthetic, train=tcfg(epochs=1)))
    assert sorted(r["test_domain"] for r in res["rows"]) == ["15", "30", "45", "60", "75"]
    assert all(r["algorithm"] == "ERM+synthetic" and "0" in r["train_domains"] for r in res["rows"])
    res = run_dg("digits", tmp_path / "df", DGConfig(data_free=True, synthetic=synthetic, train=tcfg(epochs=1)))
    assert len(res["rows"]) == 6 and all(r["train_domains"] == [f"synthetic:{synthetic}"] for r in res["rows"])


def test_lora_dg_from_a_pretrained_backbone(synthetic, tmp_path):
    bb = tmp_path / "bb"
    pretrain(synthetic, bb, cfg=tcfg(epochs=1, lora=True))
    res = run_dg("digits", tmp_path / "dg", DGConfig(weights=bb, test_domains=["30"], train=tcfg(epochs=1, lora=True)))
    (row,) = res["rows"]
    assert row["algorithm"] == "ERM+pretrained+LoRA" and row["weights"] == str(bb)


def test_bad_inputs_and_corrupt_images(synthetic, tmp_path, capsys):
    other = tmp_path / "other"
    (other / "photo" / "cat").mkdir(parents=True)
    (other / "photo" / "cat" / "a.png").write_bytes((synthetic / "neon" / "0" / "0-neon-0.png").read_bytes())
    (other / "photo" / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    ds = data.load(other)
    assert len(ds.domains[0].images) == 1 and "skipped 1 unreadable" in capsys.readouterr().err
    with pytest.raises(AugurError, match="only in .*other: cat"):
        run_dg("digits", tmp_path / "x", DGConfig(synthetic=other, train=tcfg(epochs=1)))
    with pytest.raises(AugurError, match="no domain '90'"):
        run_dg("digits", tmp_path / "x", DGConfig(test_domains=["90"], train=tcfg(epochs=1)))
    with pytest.raises(AugurError, match="--data-free"):
        run_dg("digits", tmp_path / "x", DGConfig(data_free=True, train=tcfg(epochs=1)))
    with pytest.raises(AugurError, match="unknown backbone"):
        run_dg("digits", tmp_path / "x", DGConfig(backbone="alexnet", train=tcfg(epochs=1)))
    res = CliRunner().invoke(main, ["dg", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "x")])
    assert res.exit_code == 1 and res.output.startswith("Error: ") and len(res.output.strip().splitlines()) == 1
    res = CliRunner().invoke(main, ["pretrain", "--data", "digits", "--out", str(tmp_path / "p"), "--epochs", "0"])
    assert res.exit_code == 1 and "at least 1" in res.output


def test_image_that_fails_mid_epoch_is_skipped(synthetic, tmp_path, capsys):
    import io
    import shutil

    import numpy as np
    from PIL import Image

    root = tmp_path / "synth"
    shutil.copytree(synthetic, root)
    # Half a JPEG: it passes the load-time check (PIL's verify reads the header) and fails to decode.
    buf = io.BytesIO()
    Image.fromarray(np.random.RandomState(0).randint(0, 255, (256, 256, 3), dtype=np.uint8)).save(buf, "JPEG")
    (root / "neon" / "0" / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    n = sum(len(d.labels) for d in data.load(root).domains)
    assert "unreadable" not in capsys.readouterr().err
    card = pretrain(root, tmp_path / "pt", cfg=tcfg(epochs=2))
    err = capsys.readouterr().err
    assert err.count("skipped unreadable image") == 1 and "cut.jpg" in err and "truncated" in err
    assert [h["images"] for h in card["history"]] == [n, n]  # a readable image stood in; no epoch died


def test_dg_output_of_other_settings_is_refused(lodo):
    out, _ = lodo
    with pytest.raises(AugurError, match="dg run with other settings.*train"):
        run_dg("digits", out, DGConfig(train=tcfg(epochs=4), seeds=(0,)))
    with pytest.raises(AugurError, match="not empty and holds no dg run"):
        run_dg("digits", out / "trials", DGConfig(train=tcfg(epochs=3), seeds=(0,)))


def test_accelerate_launch_two_processes(tmp_path):
    """DDP through the real `accelerate launch`: both processes train, one writes the results."""
    out = tmp_path / "dg"
    # --batch-size is per process (accelerate's convention): 2 x 32 takes the optimizer steps of one process at 64
    res = accelerate_launch(["dg", "--test-domains", "75", "--epochs", "2", "--image-size", "16", "--batch-size", "32",
                             "--quiet", "--out", str(out)])
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("result rows") == 1, res.stdout
    (row,) = read_jsonl(out / "results.jsonl")
    assert row["test_domain"] == "75" and row["test_acc"] > 0.3
    (progress,) = out.glob("trials/*/progress.json")
    history = json.loads(progress.read_text())["history"]
    train_images = sum(len(data.split(len(d.labels), 0.2, 0)[0]) for d in data.rotated_digits().domains
                       if d.name != "75")
    # each process takes half the batches; the count covers both (accelerate pads the last uneven batch)
    assert [h["epoch"] for h in history] == [1, 2] and 0 <= history[0]["images"] - train_images < 2 * 32
    pt = tmp_path / "pt"
    res = accelerate_launch(["pretrain", "--data", "digits", "--epochs", "1", "--image-size", "16", "--lora",
                             "--quiet", "--out", str(pt)])
    assert res.returncode == 0, res.stderr[-3000:]
    card = json.loads((pt / "card.json").read_text())
    assert card["files"]["backbone.safetensors"] == sha256_file(pt / "backbone.safetensors")
    assert backbones.load_pretrained(pt) is not None


def test_mixed_precision_through_accelerate(tmp_path):
    """bf16 autocast runs on CPU and is recorded; "auto" is fp32 on CPU; fp16 without a GPU is refused."""
    fp32 = pretrain("digits", tmp_path / "fp32", cfg=tcfg(epochs=1))
    bf16 = pretrain("digits", tmp_path / "bf16", cfg=tcfg(epochs=1, precision="bf16"))
    assert fp32["train"]["precision"] == "fp32" and bf16["train"]["precision"] == "bf16"
    assert bf16["history"][0]["loss"] < 2.3  # it learned (chance-level cross-entropy is ln 10 = 2.30)
    from safetensors.torch import load_file

    a, b = (load_file(str(tmp_path / m / "backbone.safetensors")) for m in ("fp32", "bf16"))
    assert all(v.dtype == torch.float32 for v in b.values() if v.is_floating_point())  # autocast: weights stay fp32
    assert not torch.equal(a["layer1.0.conv1.weight"], b["layer1.0.conv1.weight"])  # bf16 compute really ran
    for precision, message in (("fp16", "needs a CUDA GPU"), ("fp8", "unknown precision")):
        res = CliRunner().invoke(main, ["pretrain", "--data", "digits", "--out", str(tmp_path / precision),
                                        "--precision", precision])
        assert res.exit_code == 1 and res.output.startswith("Error: ") and message in res.output, res.output
        assert not (tmp_path / precision).exists()


def test_non_finite_steps_are_skipped_and_divergence_stops(tmp_path):
    """A batch whose loss is NaN changes no weight and no BatchNorm statistic; most of an epoch's batches
    non-finite is an error (guards against the sporadic NaN gradients of bf16 on CPU, and divergence)."""
    precision = "fp32"  # exact counts: bf16 on this CPU adds NaN steps of its own now and then
    from toolkit.train import Classifier, fit

    torch.manual_seed(0)
    images = [(torch.randn(3, 16, 16), i % 10) for i in range(64)]
    images[5] = (torch.full((3, 16, 16), float("nan")), 5)
    net = Classifier.build(backbones.create("resnet18", 16), 10)
    history = fit(net, images, tcfg(epochs=2, batch_size=16, precision=precision), tmp_path / "one")
    assert [h["skipped_steps"] for h in history] == [1, 1]  # the one batch holding the NaN image, each epoch
    assert all(0 < h["loss"] < 10 for h in history)
    assert all(torch.isfinite(t).all() for t in [*net.parameters(), *net.buffers()] if t.is_floating_point())
    bad = [(torch.full((3, 16, 16), float("nan")), i % 10) if i % 2 else x for i, x in enumerate(images)]
    with pytest.raises(AugurError, match=r"training diverged: 4 of 4 steps of epoch 1 .*--precision fp32"):
        fit(Classifier.build(backbones.create("resnet18", 16), 10), bad,
            tcfg(epochs=1, batch_size=16, precision=precision), tmp_path / "many")
    assert not (tmp_path / "many" / "progress.json").exists()  # nothing recorded as done
