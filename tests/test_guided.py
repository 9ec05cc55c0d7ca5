"""Real-guided rendering (`augur render --init-images DATA --strength ...`): diffusers' real image-to-image
pipelines (and optimum's ONNX one) on the tiny LCM stand-in, guided by the real digits."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cli import main
from helpers import assert_one_line_error
from toolkit.core.errors import AugurError
from toolkit.core.files import read_json, read_jsonl, sha256_file, write_jsonl
from toolkit.learn.data import rotated_digits
from toolkit.stages.render.config import RenderConfig
from toolkit.stages.render.pipeline import Renderer, check_denoising, resolve_model
from toolkit.stages.render.stage import merge, render

ROOT = Path(__file__).resolve().parent.parent
ROWS = [{"id": f"d{c}", "class": str(c), "domain": "watercolor", "prompt": f"the digit {c}, watercolor"}
        for c in range(3)]


def cfg(**kw) -> RenderConfig:
    return RenderConfig(**{"model": "tiny-lcm", "quiet": True, "device": "cpu", "init_images": "digits", **kw})


def images(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.png"))
            if p.name != "contact_sheet.png"}


@pytest.fixture(scope="module")
def guided_renderer(tiny):
    c = cfg(strength=[0.3, 0.7])
    return Renderer(resolve_model("tiny-lcm", "torch"), c)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, guided_renderer):
    """One guided render (2 images per row, strengths 0.3 and 0.7): what the other tests compare with."""
    root = tmp_path_factory.mktemp("guided")
    write_jsonl(root / "p.jsonl", ROWS)
    render(root / "p.jsonl", root / "ref", cfg(strength=[0.3, 0.7], images_per_prompt=2), renderer=guided_renderer)
    return root / "p.jsonl", root / "ref"


def test_each_image_records_its_guide_and_strength(reference):
    prompts, out = reference
    rows = read_jsonl(out / "manifest.jsonl")
    assert len(rows) == len(ROWS) * 2 * 2  # rows x images per prompt x strengths
    ident = read_json(out / "render.json")["identity"]
    # diffusers' own image-to-image class, made from the text-to-image pipeline's components
    assert ident["pipeline"] == "LatentConsistencyModelImg2ImgPipeline" and ident["strengths"] == [0.3, 0.7]
    assert ident["init_images"]["domains"] == ["0", "15", "30", "45", "60", "75"]
    digits = rotated_digits()
    guide_of: dict[tuple[str, int], dict] = {}
    for r in rows:
        g = r["init_image"]
        _, domain, index = g["path"].split("/")
        d = digits.domain(domain)
        array = d.images[int(index)]
        assert g["domain"] == domain and str(int(d.labels[int(index)])) == r["class"]  # a guide of the row's class
        assert g["sha256"] == hashlib.sha256(array.tobytes()).hexdigest()
        assert r["strength"] in (0.3, 0.7) and r["image_id"].endswith(f"-s{r['strength']:g}")
        assert r["denoising_steps"] == 4  # LCM runs all its steps, over the part of its schedule the strength leaves
        # one guide and one seed per (row, k): a strength spectrum of the same photo
        first = guide_of.setdefault((r["row_id"], r["index"]), {"guide": g, "seed": r["seed"]})
        assert first == {"guide": g, "seed": r["seed"]}
        with Image.open(out / r["path"]) as im:
            assert im.size == (32, 32)
    assert len(guide_of) == len(ROWS) * 2
    # the dataset card says what guided the set
    card = read_json(out / "dataset_card.json")
    assert card["guides"]["data"] == "digits" and card["guides"]["strengths"] == [0.3, 0.7]
    assert sum(card["guides"]["guide_images_used"].values()) == len({g["guide"]["path"] for g in guide_of.values()})
    assert "Guided by real images" in (out / "DATASET.md").read_text()


def test_the_guide_and_the_strength_decide_the_image(reference, tmp_path, guided_renderer):
    prompts, ref = reference
    base = images(ref)
    by_strength = {s: {k: v for k, v in base.items() if k.endswith(f"-s{s}.png")} for s in ("0.3", "0.7")}
    pairs = [(a, a.replace("-s0.3.png", "-s0.7.png")) for a in by_strength["0.3"]]
    assert all(base[a] != base[b] for a, b in pairs)  # the same guide and seed at another strength
    # the same guides again: the same bytes (another folder, the same renderer)
    again = tmp_path / "again"
    render(prompts, again, cfg(strength=[0.3, 0.7], images_per_prompt=2), renderer=guided_renderer)
    assert images(again) == base
    # other guides (only domain 15 may guide): other images, and every recorded guide is of domain 15
    other = tmp_path / "other"
    render(prompts, other, cfg(strength=[0.3, 0.7], images_per_prompt=2, init_domains=["15"]),
           renderer=guided_renderer)
    assert {r["init_image"]["domain"] for r in read_jsonl(other / "manifest.jsonl")} == {"15"}
    guide = {r["path"]: r["init_image"]["path"] for r in read_jsonl(ref / "manifest.jsonl")}
    moved = {r["path"] for r in read_jsonl(other / "manifest.jsonl") if r["init_image"]["path"] != guide[r["path"]]}
    changed = {k for k, v in images(other).items() if v != base[k]}
    assert changed == moved and moved  # an image changes exactly where its guide does


def test_shards_merge_to_the_unsharded_set(reference, tmp_path, guided_renderer):
    prompts, ref = reference
    sharded = tmp_path / "sharded"
    for i in range(2):
        render(prompts, sharded, cfg(strength=[0.3, 0.7], images_per_prompt=2, shard=f"{i}/2", batch_size=3),
               renderer=guided_renderer)
    merge(sharded)
    assert images(sharded) == images(ref)
    for name in ("manifest.jsonl", "dataset_card.json", "DATASET.md"):
        assert (sharded / name).read_bytes() == (ref / name).read_bytes(), name
    assert read_json(sharded / "render.json")["init_images"] == "digits"


def test_denoising_steps_are_the_steps_diffusers_runs(tiny):
    """check_denoising against the real pipelines: the UNet is called exactly that many times, for LCM's
    scheduler and for Euler's (int(steps x strength)); where it says none, diffusers fails too (LCM with a
    ValueError, SD's image-to-image with a RuntimeError deep in the UNet: hence the one line up front)."""
    import torch
    from diffusers import AutoPipelineForImage2Image, DiffusionPipeline, EulerDiscreteScheduler
    from diffusers import StableDiffusionImg2ImgPipeline

    base = DiffusionPipeline.from_pretrained(str(tiny), local_files_only=True)
    lcm = AutoPipelineForImage2Image.from_pipe(base)
    euler = StableDiffusionImg2ImgPipeline(vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer,
                                           unet=base.unet, scheduler=EulerDiscreteScheduler.from_config(
                                               base.scheduler.config), safety_checker=None, feature_extractor=None,
                                           requires_safety_checker=False)
    guide = Image.fromarray(rotated_digits().domains[0].images[0]).convert("RGB")
    calls = []
    hook = base.unet.register_forward_hook(lambda *a: calls.append(1))
    try:
        for pipe, steps, strength in ((lcm, 4, 0.3), (lcm, 4, 1.0), (lcm, 2, 0.05), (euler, 4, 0.5), (euler, 5, 0.3),
                                      (euler, 3, 1.0)):
            calls.clear()
            expected = check_denoising(pipe.scheduler, steps, strength)
            pipe.set_progress_bar_config(disable=True)
            pipe(prompt="x", image=guide, strength=strength, num_inference_steps=steps, guidance_scale=1.0,
                 generator=torch.Generator().manual_seed(0), output_type="np")
            assert len(calls) == expected, (type(pipe).__name__, steps, strength)
        for pipe, steps, strength in ((lcm, 4, 0.06), (euler, 4, 0.2)):
            with pytest.raises(AugurError, match="leaves no denoising step"):
                check_denoising(pipe.scheduler, steps, strength)
            with pytest.raises((ValueError, RuntimeError)):
                pipe(prompt="x", image=guide, strength=strength, num_inference_steps=steps, guidance_scale=1.0,
                     output_type="np")
    finally:
        hook.remove()
    assert check_denoising(euler.scheduler, 4, 0.5) == 2 and check_denoising(lcm.scheduler, 4, 0.5) == 4


def test_a_folder_of_real_images_guides_with_files_of_any_shape(tmp_path, prompts, guided_renderer):
    """A DomainBed-layout guide folder: rows name the file (relative) and its sha256; a non-square guide is
    centre-cropped to the model's square; a `test` split never guides."""
    digits = rotated_digits().domains[0]
    guides = tmp_path / "guides"
    for split in ("train", "test"):
        for c in range(3):
            (guides / split / str(c)).mkdir(parents=True)
            for k, i in enumerate(np.flatnonzero(digits.labels == c)[:2]):
                wide = np.concatenate([digits.images[i], np.zeros((32, 16), np.uint8)], axis=1)  # 48 x 32
                Image.fromarray(wide).save(guides / split / str(c) / f"{k}.png")
    out = tmp_path / "out"
    render(prompts, out, cfg(init_images=str(guides), strength=[0.5]), renderer=guided_renderer)
    rows = read_jsonl(out / "manifest.jsonl")
    assert {r["init_image"]["domain"] for r in rows} == {"train"}
    for r in rows:
        g = r["init_image"]
        assert g["path"].startswith(f"train/{r['class']}/") and g["sha256"] == sha256_file(guides / g["path"])
        with Image.open(out / r["path"]) as im:
            assert im.size == (32, 32)
    assert read_json(out / "render.json")["init_images"] == str(guides.resolve())


def test_onnx_backend_renders_guided_images_as_torch_does(reference, tmp_path, tiny):
    from toolkit.stages.render.onnx_export import export_onnx

    export_onnx("tiny-lcm")
    prompts, ref = reference
    out = tmp_path / "onnx"
    render(prompts, out, cfg(backend="onnx", strength=[0.3, 0.7], images_per_prompt=2))
    assert read_json(out / "render.json")["identity"]["pipeline"] == "ORTLatentConsistencyModelImg2ImgPipeline"
    ours, theirs = images(out), images(ref)
    assert ours.keys() == theirs.keys()
    for k in ours:
        a = np.asarray(Image.open(out / k), dtype=np.int16)
        b = np.asarray(Image.open(ref / k), dtype=np.int16)
        assert np.abs(a - b).max() <= 2, k  # the export's own parity bound (test_render)
    assert [r["init_image"] for r in read_jsonl(out / "manifest.jsonl")] == \
           [r["init_image"] for r in read_jsonl(ref / "manifest.jsonl")]


def test_bad_guided_input_is_one_line(tmp_path, prompts, tiny):
    out = tmp_path / "out"
    run = lambda *a: CliRunner().invoke(main, ["render", str(prompts), "--out", str(out), "--model", "tiny-lcm",  # noqa: E731
                                               "--quiet", *a])
    assert_one_line_error(run("--init-images", "digits", "--strength", "0"), "--strength", "> 0 and <= 1", code=2)
    assert_one_line_error(run("--init-images", "digits", "--strength", "0.5,1.2"), "--strength", code=2)
    assert_one_line_error(run("--strength", "0.5"), "--init-images", code=2)  # no option is a silent no-op
    assert_one_line_error(run("--init-images", "digits", "--init-domains", "0,test"), "test split", code=2)
    assert_one_line_error(run("--init-images", "digits", "--init-domains", "90"), "90 not among the domains", code=1)
    assert_one_line_error(run("--init-images", str(tmp_path / "nowhere")), "is not a folder", code=1)
    # a strength that leaves the LCM no step of its schedule
    assert_one_line_error(run("--init-images", "digits", "--strength", "0.05"), "leaves no denoising step",
                          "--strength", code=1)
    # a guide folder without the prompts' classes
    (tmp_path / "pets" / "photo" / "dog").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "pets" / "photo" / "dog" / "a.png")
    assert_one_line_error(run("--init-images", str(tmp_path / "pets")), "no image of class(es) 0, 1, 2", code=1)
    assert not out.exists()  # nothing was started


@pytest.mark.slow
@pytest.mark.parametrize("point", ["render.after_png:6"])  # mid-way through the second batch
def test_a_killed_guided_render_resumes_to_the_same_bytes(reference, tmp_path, point):
    prompts, ref = reference
    args = [sys.executable, "-m", "cli", "render", str(prompts), "--model", "tiny-lcm", "--init-images", "digits",
            "--strength", "0.3,0.7", "--images-per-prompt", "2", "--quiet", "--out", str(tmp_path / "out")]
    first = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600,
                           env={**os.environ, "AUGUR_KILL_AT": point})
    assert first.returncode == -9, first.stderr[-2000:]
    assert not (tmp_path / "out" / "dataset_card.json").exists()
    again = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "already done" in again.stdout
    out = tmp_path / "out"
    assert images(out) == images(ref)
    for name in ("manifest.jsonl", "dataset_card.json", "DATASET.md", "contact_sheet.png"):
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
    ident = json.loads((out / "render.json").read_text())["identity"]
    assert ident == read_json(ref / "render.json")["identity"]


def test_dg_leaves_out_images_guided_by_its_test_domain(tmp_path, guided_renderer):
    """A real guided render on the digits (guides of domains 0 and 15 only) read by dg: in the run tested on 0 no
    image guided by a photo of 0 trains or validates, and the images guided by 15 all do; and the other way."""
    from toolkit.stages.dg.config import DGConfig
    from toolkit.stages.dg.stage import RunSpec, plan_run, resolve

    rows = [{"id": f"d{c}", "class": str(c), "domain": "watercolor", "prompt": f"the digit {c}"} for c in range(10)]
    write_jsonl(tmp_path / "p.jsonl", rows)
    out = tmp_path / "guided"
    render(tmp_path / "p.jsonl", out, cfg(strength=[0.3, 0.7], images_per_prompt=2, init_domains=["0", "15"]),
           renderer=guided_renderer)
    made = read_jsonl(out / "manifest.jsonl")
    by_guide = {d: sum(r["init_image"]["domain"] == d for r in made) for d in ("0", "15")}
    assert sum(by_guide.values()) == 40 and all(by_guide.values())
    dg = DGConfig(data="digits", synthetic=str(out), test_domains=["0", "15"], steps=2, checkpoint_freq=1,
                  batch_size=4, image_size=16, quiet=True, threads=1)
    sw = resolve(dg)
    sw.images(dg)
    (synth,) = [e for e in sw.envs if not e.real]
    for test, other in (("0", "15"), ("15", "0")):
        rp = plan_run(dg, sw, RunSpec((test,), 0, 0))
        used = np.concatenate(rp.splits["synthetic"])
        assert set(synth.source_of[used]) == {other} and len(used) == by_guide[other]
        assert rp.leakage == {"kept": by_guide[other], "dropped": by_guide[test], "test_domains": [test]}


def test_cl_refuses_a_backbone_guided_by_what_it_may_test_on(tmp_path, prompts, guided_renderer):
    """cl has no test domains, but its test split must not have guided the images its backbone saw: a folder whose
    test images are a stratified draw (the digits) is refused; guides from the train split of a train/test folder
    pass."""
    from toolkit.learn.backbones import Weights
    from toolkit.stages.cl.config import CLConfig
    from toolkit.stages.cl.stage import load_scenario, refuse_test_guides

    guided = tmp_path / "guided"
    render(prompts, guided, cfg(strength=[0.5]), renderer=guided_renderer)
    backbone = Weights("pretrained", "resnet18", tmp_path / "pt", info={"data": str(guided)})
    on_digits = CLConfig(data="digits")
    with pytest.raises(AugurError, match="a guide may be a test image"):
        refuse_test_guides(on_digits, backbone, load_scenario(on_digits)[3])
    # a train/test folder guided by its train split: its test images never guided
    split = tmp_path / "split"
    digits = rotated_digits().domains[0]
    for part, idx in (("train", slice(0, 4)), ("test", slice(4, 6))):
        for c in range(3):
            (split / part / str(c)).mkdir(parents=True)
            for k, i in enumerate(np.flatnonzero(digits.labels == c)[idx]):
                Image.fromarray(digits.images[i]).save(split / part / str(c) / f"{k}.png")
    from_train = tmp_path / "from-train"
    render(prompts, from_train, cfg(init_images=str(split), strength=[0.5]), renderer=guided_renderer)
    on_split = CLConfig(data=str(split))
    refuse_test_guides(on_split, Weights("pretrained", "resnet18", tmp_path / "pt", info={"data": str(from_train)}),
                       load_scenario(on_split)[3])
    # the same folder pooled (no train/test domains): refused
    (split / "test").rename(tmp_path / "held-out")
    (split / "train").rename(split / "all")
    on_pooled = CLConfig(data=str(split))
    with pytest.raises(AugurError, match="stratified"):
        refuse_test_guides(on_pooled, Weights("pretrained", "resnet18", tmp_path / "pt",
                                              info={"data": str(from_train)}), load_scenario(on_pooled)[3])


GUIDED_RECIPE = ("name: guided\nseed: 0\nstages:\n"
                 "  extrapolate: {mode: domains, classes: [lighthouse], domains_per_class: 1}\n"
                 "  render: {model: tiny-lcm, init_images: dg.data, strength: [0.5]}\n"
                 "  dg: {data: DATA, synthetic: render}\n")


def test_a_recipe_guides_with_the_dg_data_and_hashes_what_it_names(tmp_path):
    from toolkit.run.recipe import load_recipe, stage_hashes

    def recipe(text: str) -> Path:
        p = tmp_path / f"r{len(list(tmp_path.glob('r*.yaml')))}.yaml"
        p.write_text(text)
        return p

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = stage_hashes(load_recipe(recipe(GUIDED_RECIPE.replace("DATA", str(tmp_path / "a")))))
    b = stage_hashes(load_recipe(recipe(GUIDED_RECIPE.replace("DATA", str(tmp_path / "b")))))
    assert a["render"] != b["render"] and a["extrapolate"] == b["extrapolate"]  # other guides, another render
    for text, fragment in (
            (GUIDED_RECIPE.replace("  dg: {data: DATA, synthetic: render}\n", ""), "has no dg section"),
            (GUIDED_RECIPE.replace("DATA", "digits").replace("synthetic: render", "synthetic: render, data_free: true"),
             "data-free"),
            (GUIDED_RECIPE.replace("DATA", "digits").replace("synthetic: render",
                                                              "synthetic: render, test_domains: ['0']"), "init_domains")):
        with pytest.raises(AugurError, match=fragment):
            load_recipe(recipe(text))
    # fixed test domains with the training domains named: fine
    load_recipe(recipe(GUIDED_RECIPE.replace("DATA", "digits").replace("strength: [0.5]", "strength: [0.5], "
                                                                       "init_domains: ['15', '30']")
                       .replace("synthetic: render", "synthetic: render, test_domains: ['0']")))
