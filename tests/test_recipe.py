"""Recipes end to end: quickstart.yaml with the network blocked, cache, resume, validation, report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import main
from conftest import run_then_kill
from toolkit.errors import AugurError
from toolkit.recipe import load_recipe, run_recipe
from toolkit.report import SECTIONS

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    out = tmp_path_factory.mktemp("qs")
    steps = run_recipe(ROOT / "recipes" / "quickstart.yaml", out, progress=False)
    return out, steps


def test_quickstart_end_to_end_and_report(quickstart):
    out, steps = quickstart
    assert [s["stage"] for s in steps] == ["extrapolate", "render", "pretrain", "dg", "cl", "report"]
    assert all((s["folder"] / "DONE.json").exists() for s in steps)
    report = next(s["folder"] for s in steps if s["stage"] == "report")
    md = (report / "report.md").read_text()
    for name in SECTIONS:
        assert f"## {name}" in md
    assert "drawn by `tiny-lcm`" in md and "they are noise" in md
    assert "a5fd3b62230aa5ec" in md  # the LLM's sha256 is in the provenance table
    assert "Algorithm" in md and "avg inc acc" in md
    html = (report / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4  # contact sheet, DG bars, CL curves, heat-maps
    assert "<table>" in html


def test_second_run_is_served_from_cache(quickstart):
    out, first = quickstart
    again = run_recipe(ROOT / "recipes" / "quickstart.yaml", out, progress=False)
    assert all(s["cached"] for s in again)
    assert [s["folder"] for s in again] == [s["folder"] for s in first]
    res = CliRunner().invoke(main, ["run", str(ROOT / "recipes" / "quickstart.yaml"), "--out", str(out), "--dry-run"])
    assert res.exit_code == 0 and res.output.count("cached") == 6


def test_changed_parameter_redoes_only_downstream(quickstart, tmp_path):
    out, first = quickstart
    text = (ROOT / "recipes" / "quickstart.yaml").read_text().replace("epochs: 3, image_size: 16", "epochs: 2, image_size: 16")
    changed = tmp_path / "changed.yaml"
    changed.write_text(text)
    plan = {s["stage"]: s["cached"] for s in run_recipe(changed, out, dry_run=True)}
    assert plan == {"extrapolate": True, "render": True, "pretrain": True, "dg": False, "cl": True, "report": False}


def test_killed_run_resumes_from_the_last_finished_stage(tmp_path):
    recipe = tmp_path / "small.yaml"
    recipe.write_text("name: small\nseed: 3\nstages:\n"
                      "  extrapolate: {mode: domains, classes: [lighthouse, teapot], domains_per_class: 2}\n"
                      "  render: {model: tiny-lcm, images_per_prompt: 6, batch_size: 1}\n"
                      "  report: {}\n")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "cli", "run", str(recipe), "--out", str(out), "--quiet"]
    run_then_kill(cmd, lambda: bool(list(out.glob("extrapolate-*/DONE.json"))))
    assert not list(out.glob("render-*/DONE.json"))
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert "extrapolate: cached" in res.stderr and "render: running" in res.stderr
    assert len(list(out.glob("render-*/images/manifest.jsonl"))) == 1


@pytest.mark.parametrize("text, fragment", [
    ("name: x\nstages:\n  paint: {}\n", "stages.paint: unknown stage"),
    ("name: x\n", "missing key 'stages'"),
    ("name: x\nstages:\n  dg: {epochs: three}\n", "stages.dg.epochs: expected int, got str"),
    ("name: x\nstages:\n  dg: {epoch: 3}\n", "stages.dg.epoch: unknown key"),
    ("name: x\nstages:\n  render: {}\n", "stages.render needs stages.extrapolate"),
    ("name: x\nstages: [1\n", "invalid YAML"),
    ("name: x\nseed: zero\nstages:\n  report: {}\n", "seed: expected int"),
    ("name: x\nstages:\n  dg: {precision: bf61}\n", "stages.dg.precision: unknown value 'bf61'"),
    ("name: x\nstages:\n  cl: {strategies: [naive, replya]}\n", "stages.cl.strategies: unknown value 'replya'"),
])
def test_invalid_recipes_fail_before_any_work(tmp_path, text, fragment):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(text)
    with pytest.raises(AugurError, match=fragment):
        load_recipe(recipe)
    res = CliRunner().invoke(main, ["run", str(recipe), "--out", str(tmp_path / "run")])
    assert res.exit_code == 1 and res.output.startswith("Error: ") and str(recipe) in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_shipped_recipes_validate():
    names = sorted(p.name for p in (ROOT / "recipes").glob("*.yaml"))
    assert {"quickstart.yaml", "pacs-extrapolation.yaml", "pacs-single-source.yaml", "vlcs-data-free.yaml",
            "premonition-birds.yaml", "premonition-cars.yaml", "splitdigits.yaml"} <= set(names)
    for n in names:
        load_recipe(ROOT / "recipes" / n)


def test_report_command_errors_on_non_run_folder(tmp_path):
    res = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert res.exit_code == 1 and "not a run folder" in res.output
