"""Recipes: checked as a whole before any work, cached and resumed stage by stage, every shipped recipe
smoke-run end to end; reports of any folder; the package installed non-editable."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import main
from helpers import accelerate_launch, assert_same_files, killed_at, launch_log
from toolkit.core.errors import AugurError
from toolkit.core.files import read_json, read_jsonl, write_json
from toolkit.run.recipe import load_recipe, run_recipe

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted(p.name for p in (ROOT / "recipes").glob("*.yaml"))
SMALL = ("name: small\nseed: 3\nstages:\n"
         "  extrapolate: {mode: domains, classes: [lighthouse, teapot], domains_per_class: 2}\n"
         "  render: {model: tiny-lcm, images_per_prompt: 3, batch_size: 2}\n"
         "  pretrain: {epochs: 1, image_size: 16, batch_size: 8}\n"
         "  report: {}\n")


def test_shipped_recipes_validate():
    assert {"quickstart.yaml", "pacs-extrapolation.yaml", "pacs-single-source.yaml", "vlcs-data-free.yaml",
            "premonition-birds.yaml", "premonition-cars.yaml", "splitdigits.yaml"} <= set(SHIPPED)
    for n in SHIPPED:
        load_recipe(ROOT / "recipes" / n)


def test_every_shipped_dg_recipe_with_synthetic_data_runs_its_baseline_arm():
    """Beyond Finite Data's claims are deltas: each shipped recipe that trains dg on synthetic data runs the same
    sweep without it (the `none` arm), and a data-free one runs DomainBed's leave-one-domain-out as its baseline."""
    seen = 0
    for n in SHIPPED:
        grid = load_recipe(ROOT / "recipes" / n).stages.get("dg")
        if grid is None or grid.synthetic == ["none"]:
            continue
        seen += 1
        assert "none" in grid.synthetic and len(grid.synthetic) >= 2, n
        for _, arm, cfg in grid.runs:
            assert (cfg.synthetic is None) == (arm == "none")
            if arm == "none":
                assert not cfg.data_free
    assert seen == 4  # pacs-extrapolation, pacs-single-source, pacs-guided, vlcs-data-free


@pytest.mark.parametrize("text, fragment", [
    ("name: x\nstages:\n  paint: {}\n", "stages.paint: unknown stage"),
    ("name: x\n", "missing key 'stages'"),
    ("name: x\nstages:\n  dg: {steps: three}\n", "stages.dg.steps: expected an integer, got 'three'"),
    ("name: x\nstages:\n  dg: {epochs: 3}\n", "stages.dg.epochs: unknown key"),
    ("name: x\nstages:\n  cl: {weights: [none, imagenet]}\n",
     "stages.cl.image_size: give one size for the weights none, imagenet; auto would train each at its weights' own"),
    ("name: x\nstages:\n  render: {}\n", "stages.render needs stages.extrapolate"),
    ("name: x\nstages: [1\n", "invalid YAML"),
    ("name: x\nseed: zero\nstages:\n  report: {}\n", "seed: expected an integer"),
    ("name: x\nseed: -1\nstages:\n  report: {}\n", "seed: must be >= 0"),
    ("name: ../up\nstages:\n  report: {}\n", "not a valid name"),
    ("name: x\nstages:\n  dg: {precision: bf61}\n", "stages.dg.precision: 'bf61' is not one of"),
    ("name: x\nstages:\n  cl: {strategies: [naive, replya]}\n", "stages.cl.strategies: unknown value 'replya'"),
    ("name: x\nstages:\n  extrapolate: {mode: domains, classes: [a]}\n  render: {images_per_prompt: 0}\n",
     "stages.render.images_per_prompt: must be >= 1"),
    ("name: x\nstages:\n  extrapolate: {mode: realm}\n  render: {model: no-such-model}\n",
     "stages.render.model: 'no-such-model' is not a diffusers"),
    ("name: x\nstages:\n  extrapolate: {mode: realm, model: tiny-lcm}\n", "stages.extrapolate.model: 'tiny-lcm' is not a gguf"),
    ("name: x\nstages:\n  dg: {algorithm: CORAL, hp: {irm_lambda: 1}}\n", "stages.dg.hp: CORAL has no hyper-parameter 'irm_lambda'"),
    ("name: x\nstages:\n  cl: {strategies: [ewc], hp: {ewc: {lambda: high}}}\n", "stages.cl.hp: strategy 'ewc': lambda takes a number"),
    ("name: x\nstages:\n  dg: {weights: pretrain}\n", "stages.dg needs stages.pretrain"),
    ("name: x\nstages:\n  dg: {algorithm: ERM, algorithms: [ERM, CORAL]}\n", "stages.dg.algorithms: give algorithm or"),
    ("name: x\nstages:\n  dg: {algorithms: [ERM, CORL]}\n", "stages.dg.algorithms: unknown value 'CORL'"),
    ("name: x\nstages:\n  dg: {synthetic: [none, none]}\n", "stages.dg.synthetic: ['none', 'none'] names one twice"),
    ("name: x\nstages:\n  dg: {algorithms: [ERM, CORAL], hp: {lr: 0.1}}\n", "stages.dg.hp: with several algorithms"),
    ("name: x\nstages:\n  dg: {algorithms: [ERM, CORAL], hp: {CORAL: {irm_lambda: 1}}}\n",
     "stages.dg.hp: CORAL has no hyper-parameter 'irm_lambda'"),
    ("name: x\nstages:\n  dg: {synthetic: [none, render]}\n", "stages.dg needs stages.render"),
    ("name: x\nstages:\n  dg: {data_free: true}\n", "stages.dg.data_free: trains on synthetic data only"),
])
def test_invalid_recipes_fail_before_any_work(tmp_path, text, fragment):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(text)
    with pytest.raises(AugurError, match=fragment.replace("(", "\\(").replace("[", "\\[")):
        load_recipe(recipe)
    res = CliRunner().invoke(main, ["run", str(recipe), "--out", str(tmp_path / "run")])
    assert res.exit_code == 1 and res.output.startswith("Error: ") and str(recipe) in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_stages_that_do_not_fit_together_are_caught(tmp_path):
    """The Premonition case: pretrain makes a resnet50, the cl section asks for another architecture."""
    text = (ROOT / "recipes" / "premonition-birds.yaml").read_text().replace("    image_size: 224\n",
                                                                              "    image_size: 224\n    backbone: resnet18\n")
    bad = tmp_path / "mismatch.yaml"
    bad.write_text(text)
    with pytest.raises(AugurError, match=r"mismatch.yaml: stages.cl.backbone: resnet18 does not match the pretrained "
                                         r"backbone's architecture resnet50"):
        load_recipe(bad)
    vit = tmp_path / "vit.yaml"
    vit.write_text("name: v\nstages:\n  extrapolate: {}\n  render: {}\n  pretrain: {backbone: vit_small, image_size: 32}\n"
                   "  cl: {weights: [pretrain], image_size: 64}\n")
    with pytest.raises(AugurError, match="stages.cl.image_size: 64 differs from stages.pretrain.image_size 32"):
        load_recipe(vit)
    # without a backbone in the cl section, the pretrained backbone's architecture is used
    rec = load_recipe(ROOT / "recipes" / "premonition-birds.yaml")
    assert rec.stages["cl"].base.backbone is None and rec.stages["pretrain"].backbone == "resnet50"


def test_missing_data_or_models_are_found_before_any_stage_runs(tmp_path):
    for name in ("pacs-extrapolation.yaml", "premonition-cars.yaml"):
        res = CliRunner().invoke(main, ["run", str(ROOT / "recipes" / name), "--out", str(tmp_path / name)])
        assert res.exit_code == 1 and res.output.startswith("Error: "), res.output
        assert ("is not a folder here" in res.output) or ("not present locally" in res.output)
        assert not (tmp_path / name).exists()


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("small")
    recipe = root / "small.yaml"
    recipe.write_text(SMALL)
    out = root / "run"
    return recipe, out, run_recipe(recipe, out, progress=False)


def test_run_caches_and_redoes_only_downstream(small_run, tmp_path):
    recipe, out, steps = small_run
    assert [s["stage"] for s in steps] == ["extrapolate", "render", "pretrain", "report"]
    again = run_recipe(recipe, out, progress=False)
    assert all(s["cached"] for s in again) and [s["folder"] for s in again] == [s["folder"] for s in steps]
    changed = tmp_path / "changed.yaml"
    changed.write_text(SMALL.replace("epochs: 1", "epochs: 2"))
    plan = {s["stage"]: s["cached"] for s in run_recipe(changed, out, dry_run=True)}
    assert plan == {"extrapolate": True, "render": True, "pretrain": False, "report": False}
    res = CliRunner().invoke(main, ["run", str(recipe), "--out", str(out), "--dry-run"])
    assert res.exit_code == 0 and res.output.count("cached") == 4
    other = tmp_path / "other.yaml"
    other.write_text(SMALL.replace("name: small", "name: other"))
    with pytest.raises(AugurError, match="holds a recipe run with other settings"):
        run_recipe(other, out, progress=False)


def test_run_folder_record_names_the_recipe_and_old_records_still_resume(small_run, tmp_path):
    """The run folder's record names the pseudo-stage "recipe" (messages say "a recipe run"); a folder written
    before the rename (its record says "run") still resumes every stage from cache and still reports as a run."""
    from toolkit.core.outdir import stage_in
    from toolkit.stages.report.page import plan_status

    recipe, out, steps = small_run
    record = out / "recipe.json"
    assert read_json(record)["stage"] == "recipe" and stage_in(out) == "recipe"
    res = CliRunner().invoke(main, ["dg", "--out", str(out)])
    assert res.exit_code != 0 and "holds a recipe run, not a dg run" in res.output
    old = dict(read_json(record), stage="run")
    saved = record.read_bytes()
    try:
        write_json(record, old)
        assert stage_in(out) == "recipe"
        assert [row[1] for row in plan_status(out)] == ["done", "done", "done", "this report"]
        again = run_recipe(recipe, out, progress=False)
        assert all(s["cached"] for s in again)
    finally:
        record.write_bytes(saved)


def test_report_of_any_folder(small_run, tmp_path):
    recipe, out, steps = small_run
    report = next(s["folder"] for s in steps if s["stage"] == "report")
    md = (report / "report.md").read_text()
    assert md.index("## Generated images") < md.index("## Provenance") < md.index("## Recipe")  # results first
    assert "drawn by `tiny-lcm`" in md and "they are noise" in md and "a5fd3b62230aa5ec" in md
    html = (report / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 1 and "<table>" in html
    # a stage's own output folder works too
    render_dir = next(s["folder"] for s in steps if s["stage"] == "render") / "images"
    res = CliRunner().invoke(main, ["report", str(render_dir), "--out", str(tmp_path / "r1")])
    assert res.exit_code == 0, res.output
    assert "## Generated images" in (tmp_path / "r1" / "report.md").read_text()
    pt = next(s["folder"] for s in steps if s["stage"] == "pretrain")
    assert CliRunner().invoke(main, ["report", str(pt), "--out", str(tmp_path / "r2")]).exit_code == 0
    assert "## Pretrained backbone" in (tmp_path / "r2" / "report.md").read_text()
    res = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert res.exit_code == 1 and "no Augur output here" in res.output


def test_run_under_accelerate_launch_shards_its_render_stage(small_run, tmp_path):
    """`augur run` under a real `accelerate launch` (2 processes, gloo on CPU): the main process runs the LLM
    and the report, every process renders its shard and trains, the main one merges and writes the plan;
    the images are one process's, pixel for pixel (on a CPU the batch does not change them)."""
    import dataclasses

    import numpy as np
    from PIL import Image

    from toolkit.stages.render.stage import render

    recipe, _, _ = small_run
    out = tmp_path / "run"
    res = accelerate_launch(["run", str(recipe), "--out", str(out), "--quiet"])
    assert res.returncode == 0, launch_log(res)
    # the plan and each stage's summary, printed once (by the main process)
    plan = [line.split()[:2] for line in res.stdout.splitlines() if line.split()[1:2] == ["done"]]
    assert plan == [[s, "done"] for s in ("extrapolate", "render", "pretrain", "report")], res.stdout
    assert res.stdout.count("pretrain: ") == 1 and res.stdout.count("render merge: 12 images") == 1, res.stdout
    assert res.stderr.count("render: running") == 1, res.stderr
    (images,) = out.glob("render-*/images")
    assert sorted(p.name for p in images.glob("manifest*.jsonl")) == ["manifest-0-of-2.jsonl", "manifest-1-of-2.jsonl",
                                                                       "manifest.jsonl"]
    # torchrun gives each process one thread, and the thread count changes float sums: the reference
    # renders the same prompts with the recipe's settings on one thread, in this process.
    ref_images = tmp_path / "ref"
    settings = load_recipe(recipe).stages["render"]
    render(next(out.glob("extrapolate-*")) / "prompts.jsonl", ref_images,
           dataclasses.replace(settings, threads=1, quiet=True))
    rows = {r["image_id"]: r for r in read_jsonl(images / "manifest.jsonl")}
    ref_rows = {r["image_id"]: r for r in read_jsonl(ref_images / "manifest.jsonl")}
    assert list(rows) == list(ref_rows) and len(rows) == 12
    for iid, row in rows.items():
        assert np.array_equal(np.asarray(Image.open(images / row["path"])),
                              np.asarray(Image.open(ref_images / ref_rows[iid]["path"])))
    for stage in ("extrapolate", "render", "pretrain", "report"):
        (folder,) = out.glob(f"{stage}-*")
        assert read_json(folder / "DONE.json")["stage"] == stage
    assert read_json(next(out.glob("pretrain-*")) / "card.json")["images"] == 12
    assert (next(out.glob("report-*")) / "report.html").is_file()


def test_killed_run_resumes_from_the_last_finished_stage(tmp_path):
    recipe = tmp_path / "small.yaml"
    recipe.write_text(SMALL.replace("images_per_prompt: 3, batch_size: 2", "images_per_prompt: 6, batch_size: 1"))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "cli", "run", str(recipe), "--out", str(out), "--quiet"]
    killed_at(cmd, "run.after_stage:1")  # extrapolate done, render not started
    assert not list(out.glob("render-*/DONE.json"))
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert "extrapolate: cached" in res.stderr and "render: running" in res.stderr
    assert len(list(out.glob("render-*/images/manifest.jsonl"))) == 1
    assert not list(out.rglob("*.part")) and not list(out.rglob(".*.tmp"))
    ref = tmp_path / "ref"  # the same recipe, never interrupted: every file the same, timing and paths aside
    res = subprocess.run([*cmd[:-3], "--out", str(ref), "--quiet"], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr
    assert_same_files(ref, out, masked_text=(".md", ".html"), own_path=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_recipe_runs_end_to_end_in_smoke_mode(tmp_path, name):
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["run", str(ROOT / "recipes" / name), "--smoke", "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    (report,) = out.glob("report*/report.html")
    md = report.with_name("report.md").read_text()
    plan = read_json(out / "plan.json")
    assert plan["smoke"] and "smoke run" in md
    stages = set(plan["stages"])
    if "dg" in stages:
        assert "## Domain generalization" in md
        arms = plan["stages"]["dg"]["synthetic"]
        if isinstance(arms, list):  # a grid with its baseline arm: each sweep its folder, the pairs open the results
            assert "none" in arms and len(arms) == 2
            (dg,) = out.glob("dg-*")
            assert sorted(p.name for p in dg.iterdir() if p.is_dir()) == sorted(f"erm-{a}" for a in arms)
            assert md.index("## What the synthetic data changed") < md.index("## Domain generalization")
            assert "vs none" in md and " pair" in md
    if "cl" in stages:
        assert "## Continual learning" in md
        # each hyper-parameter's toy value is the one declared with it (the recipe's 2000 -> 64, EWC's 16 samples)
        from toolkit.stages.cl.hparams import strategy_hparams

        asked = load_recipe(ROOT / "recipes" / name).stages["cl"].hp
        rows = [read_jsonl(f)[-1] for f in out.glob("cl-*/*/results.jsonl")]
        assert rows
        for row in rows:
            for k, declared in strategy_hparams(row["strategy"]).items():
                if declared.smoke is not None:
                    given = asked.get(row["strategy"], {}).get(k, declared.default)
                    assert row["hparams"][k] == declared.smoke(given), (row["strategy"], k)
    if "render" in stages:
        assert "random-weight model: they are noise" in md


@pytest.mark.slow
def test_installed_non_editable_works_from_anywhere(tmp_path):
    """`pip install --no-deps .` into a fresh venv that reuses the built environment's packages; the
    shipped cards and recipes come from the installed package data, not from this checkout."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    py = env_dir / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    ours = subprocess.run([sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "augur_deps.pth").write_text(ours + "\n")
    build = tmp_path / "src"
    shutil.copytree(ROOT, build, ignore=shutil.ignore_patterns(".venv", ".git", "runs", "__pycache__", "*.egg-info",
                                                             "build"))
    res = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index",
                          "--no-build-isolation", "--no-cache-dir", "-q", str(build)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    shutil.rmtree(build)  # nothing may be read from a checkout from now on
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "AUGUR_HOME": os.environ["AUGUR_HOME"], "PYTHONPATH": ""}
    augur = env_dir / "bin" / "augur"
    where = subprocess.run([str(py), "-c", "import toolkit, cli; from toolkit.core import paths; "
                                           "print(toolkit.__file__); print(paths.shipped_cards_dir()); "
                                           "from toolkit.stages.extrapolate import clip_tokens; "
                                           "print('clip', clip_tokens.count('a photo of a cat'))"],
                           cwd=elsewhere, capture_output=True, text=True, env=env)
    assert str(env_dir) in where.stdout and str(ROOT) not in where.stdout, where.stdout + where.stderr
    assert "clip 7" in where.stdout  # CLIP's vocabulary is package data
    # every stage of the list is in the installed copy, each with its command
    from toolkit.stages import PACKAGES

    helps = subprocess.run([str(augur), "--help"], cwd=elsewhere, capture_output=True, text=True, env=env)
    assert helps.returncode == 0, helps.stderr
    for stage in PACKAGES:
        res = subprocess.run([str(augur), stage, "--help"], cwd=elsewhere, capture_output=True, text=True, env=env)
        assert res.returncode == 0 and "Usage:" in res.stdout, (stage, res.stderr[-1000:])
    # a smoke recipe through every stage it names, the report included, from the installed copy
    recipe = elsewhere / "installed.yaml"
    recipe.write_text("name: installed\nseed: 0\nstages:\n"
                      "  extrapolate: {mode: domains, classes: [lighthouse], domains_per_class: 1}\n"
                      "  render: {model: tiny-lcm, images_per_prompt: 2}\n"
                      "  curate: {require_class_agreement: false}\n"
                      "  report: {title: installed}\n")
    run = subprocess.run([str(augur), "run", str(recipe), "--smoke", "--quiet", "--out", str(elsewhere / "run")],
                         cwd=elsewhere, capture_output=True, text=True, env=env, timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    assert [line.split()[:2] for line in run.stdout.splitlines()[-4:]] == [
        [s, "done"] for s in ("extrapolate", "render", "curate", "report")]
    ex = next((elsewhere / "run").glob("extrapolate-*"))
    assert "gemma3-270m-q4km" in (ex / "run.json").read_text()
    md = next((elsewhere / "run").glob("report-*/report.md")).read_text()
    assert "## Curated images" in md and "## Generated images" in md
    listing = subprocess.run([str(augur), "models", "list"], cwd=elsewhere, capture_output=True, text=True, env=env)
    assert listing.returncode == 0, listing.stderr
    gemma = next(line for line in listing.stdout.splitlines() if line.startswith("gemma3-270m-q4km"))
    assert "verified" in gemma and "minisd" in listing.stdout  # a card shipped as package data
    recipes = subprocess.run([str(py), "-c", "from toolkit.core import paths; "
                                             "print(sorted(p.name for p in paths.shipped_recipes_dir().glob('*.yaml')))"],
                             cwd=elsewhere, capture_output=True, text=True, env=env)
    assert "quickstart.yaml" in recipes.stdout
