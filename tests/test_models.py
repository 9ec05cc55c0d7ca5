"""Model cards offline, as their hub folders ship: tiny stand-ins with the real structure, LoRA files with
their real key format and weight_name, fp16 variants, ONNX exports as the card defines them."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import main
from toolkit import models
from toolkit.core.errors import AugurError
from toolkit.core.files import read_jsonl, write_jsonl
from toolkit.models.builders import ARCHS
from toolkit.models.tiny import pull_tiny
from toolkit.stages.render.config import RenderConfig
from toolkit.stages.render.stage import render

ROWS = [{"id": f"{c}--{d}", "class": c, "domain": d, "prompt": f"a {c}, {d}"} for c in ("heron", "owl") for d in ("neon",)]
DIFFUSERS_CARDS = ["lcm-dreamshaper-v7", "sd15-lcm-lora", "sd-turbo", "sdxs-512", "minisd", "sdxl-turbo", "pixart-alpha"]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A model home of its own: diffusers cards registered here must not become another test's 'auto' model."""
    h = tmp_path_factory.mktemp("home")
    old = os.environ["AUGUR_HOME"]
    os.environ["AUGUR_HOME"] = str(h)
    yield h
    os.environ["AUGUR_HOME"] = old


def test_the_hub_libraries_run_offline():
    """Not the variable conftest sets, but what the libraries made of it: the hub client and diffusers
    refuse to download instead of trying the network."""
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    assert constants.HF_HUB_OFFLINE
    with pytest.raises((OfflineModeIsEnabled, LocalEntryNotFoundError)):
        huggingface_hub.hf_hub_download("lambdalabs/miniSD-diffusers", "model_index.json",
                                        cache_dir=os.environ["AUGUR_HOME"])


@pytest.mark.parametrize("name", DIFFUSERS_CARDS)
def test_each_card_has_a_stand_in_with_its_structure_that_renders_offline(home, prompts, tmp_path, name):
    card = models.get_card(name)
    res = CliRunner().invoke(main, ["models", "pull", name, "--tiny"])
    assert res.exit_code == 0, res.output
    tiny = models.get_card(f"{name}-tiny")
    assert tiny.source == {"tiny_of": name} and "random-weight stand-in" in tiny.description
    folder = models.local_path(tiny)
    spec = ARCHS[card.extra["tiny"]["arch"]]
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == spec["pipeline"] and index["scheduler"][1] == spec["scheduler"][0]
    assert (index.get("safety_checker") or [None, None])[1] == ("StableDiffusionSafetyChecker" if spec["safety"] else None)
    assert index["vae"][1] == ("AutoencoderTiny" if spec["vae"] == "tiny" else "AutoencoderKL")
    sched = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert all(sched[k] == v for k, v in spec["scheduler"][1].items())
    family, fmt = spec.get("family", "sd"), card.extra["tiny"].get("weights", "safetensors")
    net = "transformer" if family == "pixart" else "unet"  # PixArt's DiT where the others have a UNet
    assert (index[net][1], "unet" in index) == (("PixArtTransformer2DModel", False) if net == "transformer" else
                                                ("UNet2DConditionModel", True))
    assert (folder / net / f"diffusion_pytorch_model.{fmt}").is_file()
    assert (folder / net / "diffusion_pytorch_model.fp16.safetensors").is_file() == (card.variant == "fp16")
    text_weights = "model.safetensors" if fmt == "safetensors" else "pytorch_model.bin"
    assert (folder / "text_encoder" / text_weights).is_file()
    assert (folder / "tokenizer" / ("spiece.model" if family == "pixart" else "vocab.json")).is_file()
    assert index["text_encoder"][1] == {"pixart": "T5EncoderModel"}.get(family, "CLIPTextModel")
    assert ("text_encoder_2" in index and (folder / "tokenizer_2" / "vocab.json").is_file()) == (family == "sdxl")
    assert not list(folder.rglob("*.safetensors" if fmt == "bin" else "*.bin"))  # one format, as the hub folder
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["render", str(prompts), "--model", f"{name}-tiny", "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    rows = read_jsonl(out / "manifest.jsonl")
    defaults = card.render_defaults
    expected_scheduler = "LCMScheduler" if defaults.get("scheduler") == "lcm" else spec["scheduler"][0]
    assert {r["scheduler"] for r in rows} == {expected_scheduler}  # every row names the scheduler that drew it
    assert {r["steps"] for r in rows} == {defaults["steps"]} and {r["guidance"] for r in rows} == {defaults["guidance"]}


def test_pull_tiny_is_idempotent_and_stable(home):
    first = pull_tiny(models.get_card("sd-turbo"))
    again = pull_tiny(models.get_card("sd-turbo"))
    assert first[2] == again[2] == models.get_card("sd-turbo-tiny").sha256
    # rebuilt from nothing, the same bytes
    shutil.rmtree(models.local_path(models.get_card("sd-turbo-tiny")))
    rebuilt = pull_tiny(models.get_card("sd-turbo"))
    assert rebuilt[2] == first[2]
    with pytest.raises(AugurError, match="stand-in already"):
        pull_tiny(models.get_card("sd-turbo-tiny"))


def test_lcm_lora_stand_in_is_kohya_format_and_really_fused(home, prompts, tmp_path):
    from safetensors.torch import load_file

    pull_tiny(models.get_card("sd15-lcm-lora"))
    lora = models.local_path(models.get_card("lcm-lora-sdv1-5-tiny"))
    assert lora.name == "pytorch_lora_weights.safetensors"
    keys = list(load_file(str(lora)))
    assert any(k.startswith("lora_unet_up_blocks_") and k.endswith(".lora_up.weight") for k in keys)
    assert any(k.endswith(".lora_down.weight") for k in keys) and any(k.endswith(".alpha") for k in keys)
    # the LoRA changes the UNet's output: fused for real (render with and without it)
    base = tmp_path / "base"
    models.save_user_card(models.ModelCard(name="sd15-base-tiny", kind="diffusers", source={"path": str(
        models.local_path(models.get_card("sd15-lcm-lora-tiny")))}, extra={"render": {
            "scheduler": "lcm", "steps": 4, "guidance": 1.0, "size": 32}}))
    render(prompts, base, RenderConfig(model="sd15-base-tiny", quiet=True))
    fused = tmp_path / "fused"
    render(prompts, fused, RenderConfig(model="sd15-lcm-lora-tiny", quiet=True))
    row = read_jsonl(fused / "manifest.jsonl")[0]
    assert row["lora"]["model"] == "lcm-lora-sdv1-5-tiny" and row["scheduler"] == "LCMScheduler"
    images = lambda d: sorted(p.read_bytes() for p in d.rglob("*.png") if p.name != "contact_sheet.png")  # noqa: E731
    assert images(base) != images(fused)


def test_a_folder_with_only_fp16_variant_files_loads(home, prompts, tmp_path):
    pull_tiny(models.get_card("sd-turbo"))
    folder = tmp_path / "fp16-only"
    shutil.copytree(models.local_path(models.get_card("sd-turbo-tiny")), folder)
    for p in list(folder.rglob("*.safetensors")):
        if ".fp16." not in p.name:
            p.unlink()
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["render", str(prompts), "--model", str(folder), "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    assert read_jsonl(out / "manifest.jsonl")[0]["variant"] == "fp16"


def test_bin_only_pipelines_load_with_weights_only_and_draw_what_safetensors_draw(home, prompts, tmp_path):
    """miniSD's stand-in ships pickled .bin weights only: it loads (recorded as such) and draws exactly the
    pixels of the same weights saved as safetensors. A .bin that unpickles more than tensors (a pickle that
    would run a command) is refused in one line by diffusers' and transformers' weights_only loading, and
    the command never runs."""
    import numpy as np
    from PIL import Image

    from toolkit.models.builders import build_pipeline

    pull_tiny(models.get_card("minisd"))
    pickled = models.local_path(models.get_card("minisd-tiny"))
    safe = build_pipeline("sd14-256", tmp_path / "safe-model")  # the same seed: the same weights
    args = ["--steps", "2", "--guidance", "2", "--size", "32", "--images-per-prompt", "1", "--quiet"]
    images = {}
    for name, folder in (("bin", pickled), ("safe", safe)):
        res = CliRunner().invoke(main, ["render", str(prompts), "--model", str(folder), "--out", str(tmp_path / name),
                                        *args])
        assert res.exit_code == 0, res.output
        rows = read_jsonl(tmp_path / name / "manifest.jsonl")
        assert rows[0].get("pickled_weights") == (["text_encoder", "unet", "vae"] if name == "bin" else None)
        images[name] = [np.asarray(Image.open(tmp_path / name / r["path"])) for r in rows]
    assert all(np.array_equal(a, b) for a, b in zip(images["bin"], images["safe"], strict=True))  # the pixels

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    import torch

    for component, weights in (("unet", "diffusion_pytorch_model.bin"), ("text_encoder", "pytorch_model.bin")):
        evil = tmp_path / f"evil-{component}"
        shutil.copytree(pickled, evil)
        torch.save({"w": Payload()}, str(evil / component / weights))
        res = CliRunner().invoke(main, ["render", str(prompts), "--model", str(evil), "--out",
                                        str(tmp_path / f"out-{component}"), *args])
        assert res.exit_code == 1 and "cannot load the pipeline" in res.output and "weights_only" in res.output
        assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "ran").exists()


def test_select_weights_takes_bin_only_where_a_component_has_no_safetensors():
    from toolkit.models.hf_cache import select_weights

    both = ["unet/diffusion_pytorch_model.bin", "unet/diffusion_pytorch_model.safetensors",
            "unet/diffusion_pytorch_model.fp16.safetensors", "unet/diffusion_pytorch_model.fp16.bin"]
    assert select_weights(both, None) == ["unet/diffusion_pytorch_model.safetensors"]
    assert select_weights(both, "fp16") == ["unet/diffusion_pytorch_model.fp16.safetensors"]
    old = ["text_encoder/pytorch_model-00001-of-00002.bin", "text_encoder/pytorch_model-00002-of-00002.bin",
           "text_encoder/pytorch_model.bin.index.json", "text_encoder/flax_model.msgpack"]
    assert select_weights(old, None) == old[:3] and select_weights(old, "fp16") == old[:3]
    assert select_weights(["vae/diffusion_pytorch_model.ckpt"], None) == []


def test_transformer_pipelines_size_and_speed_levers_read_the_transformer(home, prompts, tmp_path):
    """PixArt has a `transformer` and no `unet`: a folder with no card renders at the transformer's native
    size (sample_size x the VAE's factor), T5 prompts are counted against the pipeline's own 120-token cut,
    the pipeline's switches are recorded, and the speed levers reach the transformer."""
    from toolkit.stages.render.backends import denoiser, speed_up
    from toolkit.stages.render.pipeline import Renderer, resolve_model

    pull_tiny(models.get_card("pixart-alpha"))
    folder = models.local_path(models.get_card("pixart-alpha-tiny"))
    long = tmp_path / "long.jsonl"
    write_jsonl(long, [{**ROWS[0], "prompt": "a heron standing in shallow water at dawn, " * 4}])
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["render", str(long), "--model", str(folder), "--steps", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    row = read_jsonl(out / "manifest.jsonl")[0]
    assert row["size"] == 32 * 8 and row["steps"] == 2 and (row["guidance"], row["defaults_from"]["guidance"]) == (
        4.5, "PixArtAlphaPipeline default")
    assert row["clean_caption"] is False and row["resolution_binning"] is True
    assert "text encoder's 120 tokens" in res.output, res.output
    from PIL import Image

    assert Image.open(out / row["path"]).size == (256, 256)
    renderer = Renderer(resolve_model(str(folder), "torch"), RenderConfig(model=str(folder), quiet=True))
    assert type(denoiser(renderer.pipe)).__name__ == "PixArtTransformer2DModel"
    speed_up(renderer.pipe, RenderConfig(fuse_qkv=True, channels_last=True))
    attn = renderer.pipe.transformer.transformer_blocks[0].attn1
    assert getattr(attn, "fused_projections", False) and hasattr(attn, "to_qkv")


@pytest.mark.slow
def test_onnx_export_as_the_card_defines_it(home, prompts, tmp_path):
    pull_tiny(models.get_card("sd15-lcm-lora"))
    res = CliRunner().invoke(main, ["models", "export-onnx", "sd15-lcm-lora-tiny"])
    assert res.exit_code == 0, res.output
    assert "max pixel difference" in res.output and int(res.output.split("difference ")[1].split("/")[0]) <= 2
    export = models.get_card("sd15-lcm-lora-tiny-onnx")
    assert export.extra["exported_as"]["scheduler"] == "lcm" and export.extra["exported_as"]["lora_sha256"]
    folder = models.local_path(export)
    sched = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert sched["_class_name"] == "LCMScheduler"  # the card's scheduler went into the export
    out = tmp_path / "onnx"
    res = CliRunner().invoke(main, ["render", str(prompts), "--model", "sd15-lcm-lora-tiny", "--backend", "onnx",
                                    "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    row = read_jsonl(out / "manifest.jsonl")[0]
    assert (row["scheduler"], row["steps"], row["guidance"]) == ("LCMScheduler", 4, 1.0)
    assert row["lora"]["fused_at_export"]
    pull_tiny(models.get_card("sdxs-512"))
    res = CliRunner().invoke(main, ["models", "export-onnx", "sdxs-512-tiny"])
    assert res.exit_code == 1 and "cannot be exported to ONNX (its VAE is an AutoencoderTiny" in res.output
    pull_tiny(models.get_card("pixart-alpha"))
    res = CliRunner().invoke(main, ["models", "export-onnx", "pixart-alpha-tiny"])
    assert res.exit_code == 1 and "not PixArt" in res.output
    # SDXL's two text encoders export too, and draw what torch draws
    pull_tiny(models.get_card("sdxl-turbo"))
    res = CliRunner().invoke(main, ["models", "export-onnx", "sdxl-turbo-tiny"])
    assert res.exit_code == 0 and int(res.output.split("difference ")[1].split("/")[0]) <= 2, res.output
    assert (models.local_path(models.get_card("sdxl-turbo-tiny-onnx")) / "text_encoder_2" / "model.onnx").is_file()


def test_llm_stand_in_is_the_embedded_model_with_the_cards_prompting(home):
    tiny, path, sha = pull_tiny(models.get_card("qwen2.5-7b-instruct-q4km"))
    assert tiny.kind == "gguf" and tiny.prompting == "chat" and sha == models.get_card("gemma3-270m-q4km").sha256
    assert path.name == "gemma-3-270m-q4_k_m.gguf"
    # the base GGUF has no chat template: the stand-in prompts in the card's family (Qwen: ChatML)
    from toolkit.stages.extrapolate.llm import LLM

    llm = LLM.from_card(tiny, path, sha)
    assert llm.chat_template == "chatml" and llm.provenance()["chat_template"] == "chatml"
    pre, tokens, stops = llm.chat_prompt([{"role": "system", "content": "Be brief."},
                                          {"role": "user", "content": "Name a bird."}])
    text = llm._llm.detokenize(tokens, special=True).decode()
    assert tokens[:len(pre)] == pre and "<|im_start|>user\nName a bird.<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n") and "<|im_end|>" in stops


def test_hub_cards_say_what_a_pull_takes():
    assert models.get_card("sd15-lcm-lora").variant == "fp16"
    assert models.get_card("taesd").files == ["config.json", "diffusion_pytorch_model.safetensors"]
    hint = models.how_to_get(models.get_card("sd-turbo"))
    assert "fp16 variant" in hint and "--tiny" in hint
    res = CliRunner().invoke(main, ["models", "pull", "sd-turbo"])
    assert res.exit_code == 1 and "hub is not reachable" in res.output  # HF_HUB_OFFLINE: one line, no retries


def test_out_of_memory_message_names_the_levers():
    from toolkit.stages.render.pipeline import out_of_memory

    msg = str(out_of_memory("sd15-lcm-lora", "while loading"))
    for lever in ("--batch-size", "--vae-slicing", "--vae-tiling", "--cpu-offload", "sd15-lcm-lora", "GPU memory"):
        assert lever in msg


# ---------------------------------------------------------------- the user's Hugging Face cache
def cache_repo(hub: Path, repo: str, files: dict[str, Path | bytes], commit: str = "0123456789abcdef" * 2 + "01234567"
               ) -> Path:
    """A repository in huggingface_hub's cache layout (models--org--name/{blobs,snapshots/COMMIT,refs/main}),
    files as symlinks into content-named blobs, as `hf_hub_download` leaves them; its snapshot folder."""
    import hashlib

    base = hub / f"models--{repo.replace('/', '--')}"
    snap = base / "snapshots" / commit
    for rel, content in files.items():
        data = content if isinstance(content, bytes) else Path(content).read_bytes()
        blob = base / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snap / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    (base / "refs").mkdir(parents=True, exist_ok=True)
    (base / "refs" / "main").write_text(commit)
    return snap


@pytest.fixture
def hf_hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache for this test, and a model home of its own."""
    from huggingface_hub import constants

    hub = tmp_path / "hf-hub"
    hub.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("AUGUR_HOME", str(tmp_path / "augur-home"))
    return hub


def test_hub_cards_render_from_the_hf_cache_reading_only_what_they_need(hf_hub, prompts, tmp_path):
    """SD 1.5 + LCM-LoRA as a user's cache holds it (fp16 and fp32 weights, .bin copies, a safety checker):
    both cards resolve from the cache offline with nothing copied; the pipeline's view holds the fp16
    safetensors, configs and tokenizer only, so its digest is that of exactly those files, whatever else the
    snapshot holds; it renders, with the LoRA."""
    from huggingface_hub import scan_cache_dir

    from toolkit.core.files import sha256_file, sha256_tree

    pull_tiny(models.get_card("sd15-lcm-lora"))  # the real folder structure, tiny random weights
    tiny = models.local_path(models.get_card("sd15-lcm-lora-tiny"))
    lora = models.local_path(models.get_card("lcm-lora-sdv1-5-tiny"))
    files = {p.relative_to(tiny).as_posix(): p for p in tiny.rglob("*") if p.is_file()}
    # no safety checker (its feature extractor's config stays: diffusers reads every component model_index names)
    needed = sorted(n for n in files if not n.startswith("safety_checker/") and (
        ".fp16." in n or not n.endswith(".safetensors")))
    noise = {"unet/diffusion_pytorch_model.bin": b"never read", "text_encoder/pytorch_model.bin": b"never read",
             "vae/diffusion_pytorch_model.fp16.bin": b"never read", "v1-5-pruned.ckpt": b"never read"}
    snap = cache_repo(hf_hub, "stable-diffusion-v1-5/stable-diffusion-v1-5", {**files, **noise})
    lora_snap = cache_repo(hf_hub, "latent-consistency/lcm-lora-sdv1-5", {"pytorch_lora_weights.safetensors": lora})
    assert {r.repo_id for r in scan_cache_dir(hf_hub).repos} == {  # huggingface_hub reads the tree as its own
        "stable-diffusion-v1-5/stable-diffusion-v1-5", "latent-consistency/lcm-lora-sdv1-5"}
    assert any(n.startswith("safety_checker/") for n in files) and any(
        n.endswith(".safetensors") and ".fp16." not in n for n in files)  # the snapshot holds what must be skipped

    card, path, digest = models.ensure("lcm-lora-sdv1-5")
    assert path == lora_snap / "pytorch_lora_weights.safetensors" and digest == sha256_file(lora)  # not a copy
    card, view, digest = models.ensure("sd15-lcm-lora")
    linked = sorted(p.relative_to(view).as_posix() for p in view.rglob("*") if p.is_file())
    assert linked == needed
    assert all((view / n).is_symlink() and (view / n).resolve().parent.name == "blobs" for n in linked)
    expected = tmp_path / "expected"
    for n in needed:
        (expected / n).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(files[n], expected / n)
    assert digest == sha256_tree(expected)
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["render", str(prompts), "--model", "sd15-lcm-lora", "--size", "32", "--out",
                                    str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    row = read_jsonl(out / "manifest.jsonl")[0]
    assert row["variant"] == "fp16" and row["lora"]["model"] == "lcm-lora-sdv1-5"
    assert row["scheduler"] == "LCMScheduler"


def test_a_hub_card_is_pinned_at_first_use_and_a_file_in_a_snapshot_imports(hf_hub, tmp_path):
    """A shipped hub card has no sha256 of its own: the digest seen first is recorded and every later load
    must match it; an explicit import records a new one. A file inside a snapshot (a symlink to a blob with
    no extension) imports by its own name."""
    from safetensors.torch import save_file
    import torch

    first, second = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file({"w": torch.zeros(2)}, str(first))
    save_file({"w": torch.ones(2)}, str(second))
    snap = cache_repo(hf_hub, "latent-consistency/lcm-lora-sdv1-5", {"pytorch_lora_weights.safetensors": first})
    _, _, digest = models.ensure("lcm-lora-sdv1-5")
    blob = (snap / "pytorch_lora_weights.safetensors").resolve()
    blob.write_bytes(second.read_bytes())  # the cache's copy changed under the same name
    with pytest.raises(AugurError, match="recorded when it was first imported"):
        models.ensure("lcm-lora-sdv1-5")
    res = CliRunner().invoke(main, ["models", "list"])
    assert res.exit_code == 0 and "MISMATCH" in next(l for l in res.output.splitlines() if l.startswith("lcm-lora-sdv1-5"))
    res = CliRunner().invoke(main, ["models", "import", "lcm-lora-sdv1-5", str(snap / "pytorch_lora_weights.safetensors")])
    assert res.exit_code == 0, res.output  # by the link's name, not the blob's
    _, path, again = models.ensure("lcm-lora-sdv1-5")
    assert again != digest and path == snap / "pytorch_lora_weights.safetensors"
    # a backbone .pth inside a snapshot, under a card of the user's own
    pth = cache_repo(hf_hub, "someone/backbone", {"weights.pth": b"\x80\x02}q\x00."}) / "weights.pth"
    res = CliRunner().invoke(main, ["models", "import", "my-backbone", str(pth), "--kind", "backbone"])
    assert res.exit_code == 0, res.output


def test_a_pipeline_without_a_card_renders_with_its_class_defaults_or_those_imported(home, prompts, tmp_path):
    """No LCM numbers for a model that is not LCM: a folder with no card defaults draws with its pipeline
    class's documented ones (Stable Diffusion: 50 steps, guidance 7.5), the row says so, and fewer than 20
    steps for it is warned about; `models import --steps ...` gives it a card's defaults instead."""
    pull_tiny(models.get_card("sd-turbo"))
    folder = tmp_path / "my-sd"
    shutil.copytree(models.local_path(models.get_card("sd-turbo-tiny")), folder)
    res = CliRunner().invoke(main, ["models", "import", "my-sd", str(folder), "--kind", "diffusers"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "plain"
    res = CliRunner().invoke(main, ["render", str(prompts), "--model", "my-sd", "--size", "32", "--images-per-prompt",
                                    "1", "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    row = read_jsonl(out / "manifest.jsonl")[0]
    assert (row["steps"], row["guidance"]) == (50, 7.5)
    assert row["defaults_from"] == {"steps": "StableDiffusionPipeline default",
                                    "guidance": "StableDiffusionPipeline default"}
    res = CliRunner().invoke(main, ["render", str(prompts), "--model", "my-sd", "--size", "32", "--steps", "4",
                                    "--images-per-prompt", "1", "--out", str(tmp_path / "few"), "--quiet"])
    assert res.exit_code == 0 and "4 denoising steps for a model no card calls distilled" in res.output, res.output
    res = CliRunner().invoke(main, ["models", "import", "my-sd", str(folder), "--steps", "2", "--guidance", "0",
                                    "--size", "32", "--scheduler", "euler"])
    assert res.exit_code == 0 and "render defaults steps 2, guidance 0.0, size 32, scheduler euler" in res.output
    out = tmp_path / "carded"
    res = CliRunner().invoke(main, ["render", str(prompts), "--model", "my-sd", "--images-per-prompt", "1", "--out",
                                    str(out), "--quiet"])
    assert res.exit_code == 0 and "distilled" not in res.output, res.output
    row = read_jsonl(out / "manifest.jsonl")[0]
    assert (row["steps"], row["guidance"], row["scheduler"]) == (2, 0.0, "EulerDiscreteScheduler")
    assert row["defaults_from"] == {"steps": "card", "guidance": "card"}
    res = CliRunner().invoke(main, ["models", "import", "my-sd", str(folder), "--steps", "0"])
    assert res.exit_code == 2 and "--steps" in res.output
    from toolkit.core import paths

    bad = paths.user_cards_dir() / "bad-defaults.yaml"
    bad.write_text("name: bad-defaults\nkind: diffusers\nsource: {path: /x}\nextra:\n  render: {steps: 5000}\n")
    with pytest.raises(AugurError, match="extra.render.steps"):
        models.load_cards()
    bad.unlink()


def test_the_safety_checker_is_off_unless_asked_and_recorded_when_on(home, prompts, tmp_path):
    """SD 1.5's layout ships a safety checker: Augur loads none unless --safety-checker, which is then recorded
    (and part of the run's identity); a pipeline without one, or the ONNX backend, refuses the flag in one line."""
    from helpers import assert_one_line_error

    pull_tiny(models.get_card("sd15-lcm-lora"))
    base = ["render", str(prompts), "--model", "sd15-lcm-lora-tiny", "--images-per-prompt", "1", "--quiet"]
    res = CliRunner().invoke(main, [*base, "--out", str(tmp_path / "off")])
    assert res.exit_code == 0, res.output
    assert "safety_checker" not in read_jsonl(tmp_path / "off" / "manifest.jsonl")[0]
    res = CliRunner().invoke(main, [*base, "--safety-checker", "--out", str(tmp_path / "on")])
    assert res.exit_code == 0, res.output
    assert read_jsonl(tmp_path / "on" / "manifest.jsonl")[0]["safety_checker"] is True
    res = CliRunner().invoke(main, ["render", str(prompts), "--model", "tiny-lcm", "--safety-checker", "--out",
                                    str(tmp_path / "none")])
    assert_one_line_error(res, "has no safety checker")
