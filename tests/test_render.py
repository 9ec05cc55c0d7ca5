"""The render stage on a tiny random-init LCM pipeline (real diffusers, optimum and onnxruntime code)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cli import main
from helpers import accelerate_launch, killed_at, launch_log
from toolkit import models
from toolkit.core.errors import AugurError
from toolkit.core.files import read_jsonl, sha256_file, write_jsonl
from toolkit.stages.render.config import RenderConfig
from toolkit.stages.render.pipeline import Renderer, resolve_model
from toolkit.stages.render.stage import merge, render

ROOT = Path(__file__).resolve().parent.parent
ROWS = [{"id": f"{c}--{d}", "class": c, "domain": d, "prompt": f"a {c}, {d}"}
        for c in ("heron", "guitar", "crane (bird)") for d in ("stained-glass", "origami")]


@pytest.fixture(scope="session")
def onnx_export(tiny):
    from toolkit.stages.render.onnx_export import export_onnx

    return export_onnx("tiny-lcm", quantize="int8")


@pytest.fixture(scope="session")
def torch_renderer(tiny):
    cfg = RenderConfig(model="tiny-lcm", device="cpu", quiet=True)
    return Renderer(resolve_model("tiny-lcm", "torch"), cfg)


def cfg(**kw) -> RenderConfig:
    """The CPU unless a test asks for another device: most tests here are about what a CPU guarantees."""
    return RenderConfig(**{"model": "tiny-lcm", "quiet": True, "device": "cpu", **kw})


def images(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.png"))
            if p.name != "contact_sheet.png"}


def test_files_manifest_and_contact_sheet(prompts, tmp_path, torch_renderer):
    out = tmp_path / "out"
    res = render(prompts, out, cfg(images_per_prompt=2), renderer=torch_renderer)
    assert res["images"] == res["rendered"] == 12
    rows = read_jsonl(out / "manifest.jsonl")
    assert len(rows) == 12
    for r in rows:
        p = out / r["path"]
        assert p.parts[-3:-1] == (r["domain"], r["class"])  # DomainBed layout: domain/class/image
        assert sha256_file(p) == r["sha256"]
        with Image.open(p) as im:
            assert im.size == (32, 32) and json.loads(im.text["augur"])["seed"] == r["seed"]
        for key in ("prompt", "seed", "model", "model_sha256", "scheduler", "steps", "guidance", "size", "backend",
                    "dtype", "toolkit_version"):
            assert r[key] is not None, key
        assert (r["backend"], r["dtype"], r["scheduler"], r["steps"]) == ("torch", "fp32", "LCMScheduler", 4)
    assert len({r["seed"] for r in rows}) == 12
    assert (out / "crane (bird)" ).exists() is False and (out / "origami" / "crane (bird)").is_dir()
    with Image.open(out / "contact_sheet.png") as sheet:
        assert sheet.width > 2 * 96 and sheet.height >= 3 * 96
    ident = json.loads((out / "render.json").read_text())["identity"]
    assert ident["model"] == "tiny-lcm" and ident["prompts_sha256"] == sha256_file(prompts)
    # every synthetic set carries a dataset card: the render part (generator, prompts, counts, limits)
    card = json.loads((out / "dataset_card.json").read_text())
    assert card["generator"]["model"] == "tiny-lcm" and card["generator"]["model_sha256"] == ident["model_sha256"]
    assert card["generator"]["steps"] == 4 and card["generator"]["seed"] == 0 and card["images"] == 12
    assert card["prompts_sha256"] == sha256_file(prompts) and card["llm"]["known"] is False  # no run.json beside it
    assert card["images_per_class_domain"]["crane (bird)"] == {"origami": 2, "stained-glass": 2}
    assert card["classes"] == ["crane (bird)", "guitar", "heron"] and "not curated" in card["limits"][0]
    md = (out / "DATASET.md").read_text()
    assert "tiny-lcm" in md and "| crane (bird) | 2 | 2 |" in md and "not curated" in md


def test_same_image_whatever_the_batch_size_or_shard(prompts, tmp_path, torch_renderer):
    ref = tmp_path / "b1"
    render(prompts, ref, cfg(batch_size=1), renderer=torch_renderer)
    for bs in (3, 4):
        out = tmp_path / f"b{bs}"
        render(prompts, out, cfg(batch_size=bs), renderer=torch_renderer)
        assert images(out) == images(ref)
        assert (out / "manifest.jsonl").read_bytes() == (ref / "manifest.jsonl").read_bytes()
    sharded = tmp_path / "sharded"
    counts = [render(prompts, sharded, cfg(batch_size=2, shard=f"{i}/2"), renderer=torch_renderer)["images"]
              for i in range(2)]
    assert sum(counts) == len(ROWS) and all(counts)
    assert not (sharded / "dataset_card.json").exists()  # a shard alone is not the set
    merge(sharded)
    assert images(sharded) == images(ref)
    assert (sharded / "dataset_card.json").read_bytes() == (ref / "dataset_card.json").read_bytes()  # the merge's
    assert (sharded / "DATASET.md").read_bytes() == (ref / "DATASET.md").read_bytes()
    assert (sharded / "manifest.jsonl").read_bytes() == (ref / "manifest.jsonl").read_bytes()
    other_seed = tmp_path / "seed1"
    render(prompts, other_seed, cfg(seed=1), renderer=torch_renderer)
    assert images(other_seed) != images(ref)


def test_accelerate_launch_shards_then_merges(prompts, tmp_path, tiny, torch_renderer):
    """Real `accelerate launch` (torchrun underneath, gloo on CPU): a shard per process, merged at the end."""
    out = tmp_path / "acc"
    res = accelerate_launch(["render", str(prompts), "--out", str(out), "--device", "cpu", "--quiet"])
    assert res.returncode == 0, launch_log(res)
    assert sorted(p.name for p in out.glob("manifest*.jsonl")) == [
        "manifest-0-of-2.jsonl", "manifest-1-of-2.jsonl", "manifest.jsonl"]
    assert res.stdout.count("render merge:") == 1, res.stdout  # the main process alone merges
    assert all(read_jsonl(out / f"manifest-{i}-of-2.jsonl") for i in range(2))  # both did real work
    # torchrun gives each process one CPU thread, and the thread count changes float reduction order
    # (one pixel of these images moves by 1/255): the reference runs on one thread too.
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = tmp_path / "ref"
        render(prompts, ref, cfg(), renderer=torch_renderer)
    finally:
        torch.set_num_threads(threads)
    assert images(out) == images(ref)
    assert (out / "manifest.jsonl").read_bytes() == (ref / "manifest.jsonl").read_bytes()
    assert (out / "contact_sheet.png").exists()


def test_merge_refuses_missing_shard(prompts, tmp_path, torch_renderer):
    out = tmp_path / "out"
    render(prompts, out, cfg(shard="0/3"), renderer=torch_renderer)
    with pytest.raises(Exception, match="shard\\(s\\) 1, 2 of 3 are missing"):
        merge(out)


def test_resume_after_kill_torn_manifest_and_corrupt_image(prompts, tmp_path, torch_renderer):
    ref = tmp_path / "ref"
    render(prompts, ref, cfg(images_per_prompt=4), renderer=torch_renderer)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "cli", "render", str(prompts), "--out", str(out), "--images-per-prompt", "4",
           "--batch-size", "1", "--device", "cpu", "--quiet"]
    manifest = out / "manifest.jsonl"
    killed_at(cmd, "render.after_batch:3")  # three batches of one image written, the fourth under way
    rows = read_jsonl(manifest)
    assert 3 <= len(rows) < 24
    # A crash can tear the manifest's last line and leave a damaged image: both are redone.
    with open(manifest, "a") as f:
        f.write('{"image_id": "heron--orig')
    damaged = out / rows[0]["path"]
    damaged.write_bytes(b"not a png")
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert not list(out.rglob("*.part"))  # a writer killed mid-file left a temp file: the resume cleared it
    assert "already done" in res.stdout
    done = int(res.stdout.split("new, ")[1].split(" already")[0])
    assert done == len(rows) - 1  # the damaged one was redone
    assert images(out) == images(ref)
    assert manifest.read_bytes() == (ref / "manifest.jsonl").read_bytes()


def test_onnx_export_parity_and_backend(prompts, tmp_path, onnx_export, torch_renderer):
    assert set(onnx_export) == {"tiny-lcm-onnx", "tiny-lcm-onnx-int8"}
    assert onnx_export["tiny-lcm-onnx"]["parity_max_pixel_diff"] <= 2
    # Measured 1/255 and 2/255 on the tiny model; a broken quantization would be far off.
    assert onnx_export["tiny-lcm-onnx-int8"]["parity_max_pixel_diff"] <= 8
    from toolkit.stages.render.onnx_export import export_onnx

    again = export_onnx("tiny-lcm", quantize="int8-conv")
    assert again["tiny-lcm-onnx"] == onnx_export["tiny-lcm-onnx"]  # the fp32 export and its record are reused
    conv = again["tiny-lcm-onnx-int8-conv"]
    assert conv["parity_max_pixel_diff"] <= 16
    import onnx

    def ops(name):
        graph = onnx.load(str(models.local_path(models.get_card(name)) / "unet" / "model.onnx"),
                          load_external_data=False).graph
        return {n.op_type for n in graph.node}

    assert {"MatMulInteger", "ConvInteger"}.isdisjoint(ops("tiny-lcm-onnx"))
    assert "MatMulInteger" in ops("tiny-lcm-onnx-int8") and "ConvInteger" not in ops("tiny-lcm-onnx-int8")
    assert {"MatMulInteger", "ConvInteger"} <= ops("tiny-lcm-onnx-int8-conv")
    assert models.get_card("tiny-lcm-onnx-int8-conv").extra["quantized"] == "int8-conv"
    card = models.get_card("tiny-lcm-onnx")
    assert card.kind == "onnx" and card.extra["exported_from"] == "tiny-lcm"
    ref = tmp_path / "torch"
    render(prompts, ref, cfg(), renderer=torch_renderer)
    outs = {}
    for bs in (1, 4):
        out = tmp_path / f"onnx{bs}"
        res = render(prompts, out, cfg(model="tiny-lcm", backend="onnx", batch_size=bs))
        assert "on onnx/cpu/fp32" in res["line"]
        outs[bs] = images(out)
        assert {r["backend"] for r in read_jsonl(out / "manifest.jsonl")} == {"onnx"}
    assert outs[1] == outs[4]
    import numpy as np

    for rel, data in outs[1].items():
        a = np.asarray(Image.open(ref / rel), dtype=np.int16)
        b = np.asarray(Image.open(tmp_path / "onnx1" / rel), dtype=np.int16)
        assert np.abs(a - b).max() <= 2
    for q in ("int8", "int8-conv"):
        render(prompts, tmp_path / q, cfg(model=f"tiny-lcm-onnx-{q}", backend="onnx"))
        assert len(images(tmp_path / q)) == len(ROWS)


def test_tiny_vae_and_slicing_switches(prompts, tmp_path, tiny):
    import torch
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    taesd = AutoencoderTiny(encoder_block_out_channels=(16, 16), decoder_block_out_channels=(16, 16),
                            num_encoder_blocks=(1, 1), num_decoder_blocks=(1, 1), latent_channels=4)
    taesd.save_pretrained(tmp_path / "taesd")
    plain = tmp_path / "plain"
    render(prompts, plain, cfg())
    sliced = tmp_path / "sliced"
    render(prompts, sliced, cfg(attention_slicing=True, vae_slicing=True))
    # slicing changes how much is computed at once, not what: the same pixels but for float rounding
    # (measured: one image of six with pixels 1/255 apart), where another decoder changes them all
    def pixels(folder, rel):
        return np.asarray(Image.open(folder / rel), dtype=np.int16)

    assert sorted(images(sliced)) == sorted(images(plain))
    srow = read_jsonl(sliced / "manifest.jsonl")[0]  # recorded, as it moves pixels; absent when off
    assert srow["attention_slicing"] is srow["vae_slicing"] is True and "vae_tiling" not in srow
    assert "attention_slicing" not in read_jsonl(plain / "manifest.jsonl")[0]
    with pytest.raises(AugurError, match="--cpu-offload .* needs --device cuda"):
        render(prompts, tmp_path / "offload", cfg(cpu_offload=True))
    assert max(np.abs(pixels(sliced, rel) - pixels(plain, rel)).max() for rel in images(plain)) <= 1
    out = tmp_path / "out"
    res = render(prompts, out, cfg(tiny_vae=str(tmp_path / "taesd")))
    assert res["rendered"] == len(ROWS)
    row = read_jsonl(out / "manifest.jsonl")[0]
    assert row["tiny_vae"]["sha256"] and row["tiny_vae"]["model"].endswith("taesd")
    # another decoder draws other pixels from the same latents
    for rel in images(out):
        assert np.abs(pixels(plain, rel) - pixels(out, rel)).mean() > 5, rel


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_images_repeat_and_a_resume_keeps_batch_and_gpu(prompts, tmp_path, tiny):
    """On CUDA: fp16 by default, the same bytes when run again at the same batch size; the manifest records the
    batch and the GPU; a resume at another batch size is refused with one line (its images would differ)."""
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        render(prompts, out, cfg(device="auto", batch_size=3, images_per_prompt=2))
    assert images(a) == images(b)
    row = read_jsonl(a / "manifest.jsonl")[0]
    assert (row["device"], row["dtype"], row["compute_batch"]) == ("cuda", "fp16", 3) and row["gpu"]["name"]
    (a / "manifest.jsonl").unlink()  # as if killed before the end: a resume
    res = cli("render", str(prompts), "--out", str(a), "--batch-size", "4", "--images-per-prompt", "2", "--quiet")
    one_line_error(res, "in batches of 3", "--batch-size 3", code=1)


# ------------------------------------------------------------------ bad input through the CLI
def cli(*args):
    return CliRunner().invoke(main, list(args))


def one_line_error(res, *fragments, code=None):
    assert res.exit_code != 0 and (code is None or res.exit_code == code), (res.exit_code, res.output)
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    for f in fragments:
        assert f in lines[0], lines[0]


def test_bad_prompt_rows_name_their_line(tmp_path, tiny):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(ROWS[0]) + "\n{not json\n")
    one_line_error(cli("render", str(bad), "--out", str(tmp_path / "o")), "bad.jsonl:2", "not valid JSON")
    bad.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps({"id": "x", "class": "c", "domain": "d"}) + "\n")
    one_line_error(cli("render", str(bad), "--out", str(tmp_path / "o")), "bad.jsonl:2", "prompt")
    bad.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps(ROWS[0]) + "\n")
    one_line_error(cli("render", str(bad), "--out", str(tmp_path / "o")), "repeats line 1")
    one_line_error(cli("render", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o")), "no such file")
    assert not (tmp_path / "o").exists()


def test_bad_model_backend_dtype(prompts, tmp_path, tiny):
    out = str(tmp_path / "o")
    one_line_error(cli("render", str(prompts), "--out", out, "--model", "no-such-model"), "unknown model")
    one_line_error(cli("render", str(prompts), "--out", out, "--backend", "tensorrt"),
                   "'tensorrt' is not one of torch, onnx", code=2)
    one_line_error(cli("render", str(prompts), "--out", out, "--precision", "fp16", "--device", "cpu"),
                   "fp16 needs a CUDA GPU", code=1)
    one_line_error(cli("render", str(prompts), "--out", out, "--dtype", "fp8"), "'fp8' is not one of", code=2)
    one_line_error(cli("render", str(prompts), "--out", out, "--shard", "2/2"), "--shard: must be i/n", code=2)
    one_line_error(cli("render", str(prompts), "--out", out, "--guidance", "-3"), "--guidance", ">= 0", code=2)
    broken = tmp_path / "broken"
    shutil.copytree(tiny, broken)
    shutil.rmtree(broken / "unet")
    one_line_error(cli("render", str(prompts), "--out", out, "--model", str(broken)), "cannot load the pipeline")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny, corrupt)
    weights = next((corrupt / "unet").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])
    one_line_error(cli("render", str(prompts), "--out", out, "--model", str(corrupt)), "cannot load the pipeline")
    assert not (tmp_path / "o" / "manifest.jsonl").exists()
    import torch
    from diffusers import AutoencoderKL

    nan_vae = tmp_path / "nan-vae"
    shutil.copytree(tiny, nan_vae)
    vae = AutoencoderKL.from_pretrained(str(nan_vae / "vae"))
    with torch.no_grad():
        vae.decoder.conv_out.weight.fill_(float("nan"))
    vae.save_pretrained(str(nan_vae / "vae"))
    one_line_error(cli("render", str(prompts), "--out", out, "--model", str(nan_vae), "--quiet"),
                   "non-finite pixels", "weights intact")
    assert not list((tmp_path / "o").rglob("*.png"))


def test_output_of_a_different_run_is_refused(prompts, tmp_path, tiny):
    out = tmp_path / "o"
    assert cli("render", str(prompts), "--out", str(out), "--quiet").exit_code == 0
    before = images(out)
    one_line_error(cli("render", str(prompts), "--out", str(out), "--model", "tiny-lcm", "--seed", "7"),
                   "render run with other settings", "seed")
    one_line_error(cli("render", str(prompts), "--out", str(out), "--model", "tiny-lcm", "--steps", "2"),
                   "render run with other settings", "steps")
    assert images(out) == before
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    one_line_error(cli("render", str(prompts), "--out", str(other)), "not empty")
    res = cli("render", str(prompts), "--out", str(out), "--quiet")  # same run again: all already done
    assert res.exit_code == 0 and f"0 new, {len(ROWS)} already done" in res.output


def test_lora_card_is_fused_at_load(prompts, tmp_path, tiny, torch_renderer, monkeypatch):
    """The SD 1.5 + LCM-LoRA family: a LoRA card named in a pipeline card's render defaults."""
    # Cards of its own: a diffusers card left in the session's home would become the quickstart's "auto" model.
    monkeypatch.setenv("AUGUR_HOME", str(tmp_path / "home"))
    import torch
    from diffusers import LatentConsistencyModelPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = LatentConsistencyModelPipeline.from_pretrained(str(tiny))
    torch.manual_seed(0)
    # init_lora_weights=False: random A and B, so the adapter really changes the UNet.
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                     target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    lora_dir = tmp_path / "lora"
    LatentConsistencyModelPipeline.save_lora_weights(
        str(lora_dir), unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet)))
    lora_file = lora_dir / "pytorch_lora_weights.safetensors"
    assert CliRunner().invoke(main, ["models", "import", "tiny-test-lora", str(lora_file), "--kind", "lora"]).exit_code == 0
    models.save_user_card(models.ModelCard(
        name="tiny-lcm-with-lora", kind="diffusers", source={"path": str(tiny)},
        extra={"render": {"scheduler": "lcm", "steps": 4, "guidance": 8.0, "size": 32, "lora": "tiny-test-lora"}}))
    out = tmp_path / "out"
    render(prompts, out, cfg(model="tiny-lcm-with-lora"))
    row = read_jsonl(out / "manifest.jsonl")[0]
    assert row["lora"] == {"model": "tiny-test-lora", "sha256": sha256_file(lora_file)}
    plain = tmp_path / "plain"
    render(prompts, plain, cfg(), renderer=torch_renderer)
    assert images(out) != images(plain)


def test_a_model_folder_is_hashed_once_until_a_file_changes(prompts, tmp_path, tiny):
    """`render --model DIR` reads a folder's digest from the cache while no file's size or time changed, says so,
    and hashes it anew (another digest) when a file changes."""
    from toolkit.core.digests import tree_digest
    from toolkit.core.files import sha256_tree

    folder = tmp_path / "pipe"
    shutil.copytree(tiny, folder)
    first = render(prompts, tmp_path / "a", cfg(model=str(folder)))
    again = render(prompts, tmp_path / "b", cfg(model=str(folder)))
    assert (first["model_digest"], again["model_digest"]) == ("computed", "cached")
    assert "digest from the cache" in again["line"] and "digest from the cache" not in first["line"]
    a, b = (json.loads((tmp_path / x / "render.json").read_text())["identity"]["model_sha256"] for x in "ab")
    assert a == b == sha256_tree(folder)
    config = folder / "scheduler" / "scheduler_config.json"
    config.write_text(config.read_text().replace("{", '{"_note": "edited",', 1))
    digest, cached = tree_digest(folder)
    assert not cached and digest == sha256_tree(folder) != a
    assert tree_digest(folder) == (digest, True)


def test_prompts_longer_than_the_text_encoder_reads_are_counted_and_said(tmp_path, tiny):
    """diffusers cuts a prompt at the tokenizer's limit and says so only in its (silenced) log: the render
    counts with the pipeline's own tokenizer, records it in render.json and warns with the counts."""
    long = "a heron " + " ".join(["standing in shallow water beside tall reeds"] * 12)
    rows = [{"id": "heron--long", "class": "heron", "domain": "long", "prompt": long},
            {"id": "heron--short", "class": "heron", "domain": "short", "prompt": "a heron, origami"}]
    p = tmp_path / "prompts.jsonl"
    write_jsonl(p, rows)
    res = CliRunner().invoke(main, ["render", str(p), "--model", "tiny-lcm", "--images-per-prompt", "1", "--out",
                                    str(tmp_path / "out"), "--quiet"])
    assert res.exit_code == 0, res.output
    tok = Renderer(resolve_model("tiny-lcm", "torch"), cfg()).pipe.tokenizer
    n = len(tok(long, truncation=False).input_ids)
    assert n > tok.model_max_length == 77
    assert (f"1 of 2 prompts are longer than the text encoder's 77 tokens and were cut (longest {n} tokens"
            in res.output)
    record = json.loads((tmp_path / "out" / "render.json").read_text())
    assert record["prompt_tokens"] == {"limit": 77, "prompts": 2, "truncated": 1, "longest": n, "example": long[:80]}
