"""Files Augur reads but did not write: a corrupt variant of each kind, made by mutating a real output (a key
dropped, a type changed, a loop), gives one line and exit 1, never a traceback; rows of a foreign or
corrupt kind in a folder being collected are left out with one warning naming their count."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import main
from toolkit.core.files import read_json, read_jsonl, write_json, write_jsonl


def augur(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line(res, *fragments, code=1):
    lines = [line for line in res.output.strip().splitlines() if line and not line.startswith("warning:")]
    assert res.exit_code == code, res.output
    assert len(lines) == 1 and lines[0].startswith("Error:"), res.output
    for f in fragments:
        assert f in lines[0], (f, lines[0])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A real recipe run with every stage that writes files others read back (extrapolate, render, curate,
    pretrain on the curated set, report), to mutate."""
    root = tmp_path_factory.mktemp("hostile")
    recipe = root / "r.yaml"
    recipe.write_text("name: h\nseed: 0\nstages:\n  extrapolate: {mode: domains, classes: [lighthouse], "
                      "domains_per_class: 1}\n  render: {model: tiny-lcm, images_per_prompt: 2}\n  curate: {}\n"
                      "  pretrain: {epochs: 1, image_size: 16, batch_size: 2, data: curate}\n  report: {}\n")
    res = augur("run", recipe, "--smoke", "--quiet", "--out", root / "run")
    assert res.exit_code == 0, res.output
    return root / "run"


@pytest.fixture()
def copy(run_dir, tmp_path):
    """A copy of the run whose plan points at the copy's own stage folders."""
    dst = tmp_path / "run"
    shutil.copytree(run_dir, dst)
    plan = read_json(dst / "plan.json")
    for s in plan["plan"]:
        s["folder"] = str(dst / Path(s["folder"]).name)
    write_json(dst / "plan.json", plan)
    assert augur("report", dst, "--out", tmp_path / "ok").exit_code == 0
    return dst


def folder_of(run: Path, stage: str) -> Path:
    return next(run.glob(f"{stage}-*"))


def test_plan_json_loops_and_wrong_shapes(copy, tmp_path):
    plan = read_json(copy / "plan.json")
    looped = {**plan, "plan": plan["plan"] + [{"stage": "extrapolate", "folder": str(copy)}]}
    write_json(copy / "plan.json", looped)
    one_line(augur("report", copy, "--out", tmp_path / "r1"), "plan.json", "loop")
    # a loop of two run folders
    other = tmp_path / "other"
    shutil.copytree(copy, other)
    write_json(other / "plan.json", {**plan, "plan": [{"stage": "extrapolate", "folder": str(copy)}]})
    write_json(copy / "plan.json", {**plan, "plan": [{"stage": "extrapolate", "folder": str(other)}]})
    one_line(augur("report", copy, "--out", tmp_path / "r2"), "loop")
    write_json(copy / "plan.json", {k: v for k, v in plan.items() if k != "plan"})
    one_line(augur("report", copy, "--out", tmp_path / "r3"), "plan.json", "'plan'")
    write_json(copy / "plan.json", "a string")
    one_line(augur("report", copy, "--out", tmp_path / "r4"), "plan.json", "not a run plan")


@pytest.mark.parametrize("stage,file,mutate", [
    ("render", "images/render.json", lambda d: {**d, "identity": {k: v for k, v in d["identity"].items()
                                                                 if k != "model"}}),
    ("extrapolate", "run.json", lambda d: {k: v for k, v in d.items() if k != "summary"}),
    ("pretrain", "card.json", lambda d: {}),
])
def test_a_stage_record_missing_a_field(copy, tmp_path, stage, file, mutate):
    f = folder_of(copy, stage) / file
    write_json(f, mutate(read_json(f)))
    one_line(augur("report", copy, "--out", tmp_path / "r"), stage, "not as augur writes it")


def test_a_title_naming_a_missing_image_stays_text(copy, tmp_path):
    res = augur("report", copy, "--out", tmp_path / "r", "--title", "x\n![pic](missing.png)")
    assert res.exit_code == 0, res.output
    assert "missing.png" in (tmp_path / "r" / "report.html").read_text()


@pytest.fixture(scope="module")
def dg_rows(tmp_path_factory):
    from toolkit.stages.dg.config import DGConfig
    from toolkit.stages.dg.stage import run_dg

    out = tmp_path_factory.mktemp("dgrows")
    run_dg(DGConfig(test_domains=["0"], selection=["training-domain"], steps=2, checkpoint_freq=1, image_size=16,
                    batch_size=4, quiet=True, threads=1), out / "dg")
    return read_jsonl(out / "dg" / "results.jsonl")


@pytest.mark.parametrize("mutate", [lambda r: {**r, "test_acc": "high"}, lambda r: {k: v for k, v in r.items()
                                                                                    if k != "dataset"},
                                    lambda r: {k: v for k, v in r.items() if k != "label"},
                                    lambda r: {**r, "trial_seed": [0, 1]}])
def test_dg_collect_and_report_skip_corrupt_rows_with_one_warning(dg_rows, tmp_path, mutate):
    d = tmp_path / "dg"
    d.mkdir()
    write_jsonl(d / "results.jsonl", dg_rows + [mutate(dict(dg_rows[0]))])
    res = augur("dg", "collect", d)
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output
    assert "left out 1 row(s)" in res.output and "ERM" in res.output
    write_jsonl(d / "results.jsonl", [mutate(dict(r)) for r in dg_rows])
    one_line(augur("dg", "collect", d), "no DG result rows")


def test_cl_collect_skips_corrupt_rows(tmp_path):
    row = {"final": True, "strategy": "ncm", "weights": "none", "backbone": "resnet18", "protocol": "B2-Inc2",
           "average_incremental_accuracy": 0.5, "last_accuracy": 0.4, "average_forgetting": 0.1}
    d = tmp_path / "cl"
    d.mkdir()
    bad = [{k: v for k, v in row.items() if k != "strategy"}, {**row, "weights": 3},
           {**row, "last_accuracy": "0.4"}]
    write_jsonl(d / "results.jsonl", [row] + bad)
    res = augur("cl", "collect", d)
    assert res.exit_code == 0 and "left out 3 row(s)" in res.output and "ncm" in res.output, res.output
    write_jsonl(d / "results.jsonl", bad)
    one_line(augur("cl", "collect", d), "no finished")


@pytest.mark.parametrize("key,value,fragment", [("source", "hub:x/y", "'source' must be a mapping"),
                                                ("sha256", 1234, "'sha256' must be text"),
                                                ("extra", [1, 2], "'extra' must be a mapping")])
def test_model_cards_of_the_wrong_types(tmp_path, monkeypatch, key, value, fragment):
    import yaml

    monkeypatch.setenv("AUGUR_HOME", str(tmp_path / "home"))
    cards = tmp_path / "home" / "cards"
    cards.mkdir(parents=True)
    (cards / "bad.yaml").write_text(yaml.safe_dump({"name": "bad", "kind": "gguf", key: value}))
    one_line(augur("models", "list"), "bad.yaml", fragment)


@pytest.mark.parametrize("name", ["EvilPipeline", "system", "__class__"])
def test_a_pipeline_folder_naming_a_class_diffusers_lacks(tmp_path, name):
    from toolkit import models

    _, tiny, _ = models.ensure("tiny-lcm")
    folder = tmp_path / "pipe"
    shutil.copytree(tiny, folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": name}))
    prompts = tmp_path / "p.jsonl"
    write_jsonl(prompts, [{"id": "a", "class": "a", "domain": "d", "prompt": "an a"}])
    one_line(augur("render", prompts, "--model", folder, "--out", tmp_path / "out", "--quiet"), "_class_name",
             "not a diffusers pipeline")
    (folder / "model_index.json").write_text(json.dumps({**index, "unet": ["os", "system"]}))
    one_line(augur("render", prompts, "--model", folder, "--out", tmp_path / "out2", "--quiet"), "os.system")


def test_dg_weights_of_the_right_names_and_wrong_shapes(tmp_path):
    import timm
    import torch
    from safetensors.torch import save_file

    state = timm.create_model("resnet18", num_classes=0).state_dict()
    state["conv1.weight"] = torch.zeros(8, 3, 3, 3)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    res = augur("dg", "--weights", tmp_path / "w.safetensors", "--steps", "1", "--test-domains", "0", "--image-size",
                "16", "--out", tmp_path / "dg", "--quiet")
    # the sweep's plan line comes first (the weights are loaded when the first run builds its network)
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    last = res.output.strip().splitlines()[-1]
    assert last.startswith("Error:") and "do not fit" in last and "conv1.weight" in last, last


# ----------------------------------------------------------------------------- every file kind, mutated
READ_BACK = ["plan.json", "recipe.json", "*/DONE.json", "extrapolate-*/extrapolate.json", "extrapolate-*/run.json",
             "extrapolate-*/prompts.jsonl", "render-*/images/render.json", "render-*/images/manifest.jsonl",
             "curate-*/curate.json", "curate-*/quality.json", "curate-*/scores.jsonl", "curate-*/manifest.jsonl",
             "pretrain-*/card.json", "pretrain-*/pretrain.json"]
ROW_KEYS = ("id", "image_id", "class", "domain", "prompt", "path", "sha256", "kept", "reasons")  # what readers use


def _retyped(v):
    return 7 if isinstance(v, str) else "x"


def mutants(path: Path):
    """(name, text) of corrupt variants of a real output file: truncated, empty, of another shape, and, key by
    key, a key dropped or (alternately) retyped, at the top of a record or in a row's readers' keys."""
    text = path.read_text()
    yield "truncated", text[: len(text) // 2]
    yield "empty", ""
    if path.suffix == ".jsonl":
        yield "a row that is a list", text + "[1, 2]\n"
        rows = [json.loads(line) for line in text.splitlines()]
        keys = [k for k in rows[0] if k in ROW_KEYS]
        for i, k in enumerate(keys):
            row = dict(rows[0])
            if i % 2:
                row[k] = _retyped(row[k])
            else:
                del row[k]
            yield f"row 1 {'with ' + k + ' retyped' if i % 2 else 'without ' + k}", "\n".join(
                json.dumps(r) for r in [row] + rows[1:]) + "\n"
        return
    yield "a list", "[]"
    data = json.loads(text)
    for i, k in enumerate(data if isinstance(data, dict) else []):
        if i % 2:
            yield f"{k} retyped", json.dumps({**data, k: _retyped(data[k])})
        else:
            yield f"without {k}", json.dumps({x: v for x, v in data.items() if x != k})


def test_every_file_kind_read_back_mutated_gives_one_line_or_a_report(run_dir, tmp_path):
    """`augur report` reads every record, manifest and row file of a run: each corrupt variant either reports
    (saying what it could not read) or fails in one line; never a traceback."""
    full_run = run_dir  # restored after each mutant: the module's other tests read it too
    files = sorted({p for pat in READ_BACK for p in full_run.glob(pat)})
    assert len(files) >= 18, files
    n = 0
    for f in files:
        original = f.read_bytes()
        try:
            for name, text in mutants(f):
                f.write_text(text)
                res = augur("report", full_run, "--out", tmp_path / f"r{n}")
                n += 1
                where = f"{f.relative_to(full_run)} {name}"
                assert res.exception is None or isinstance(res.exception, SystemExit), (
                    where, res.output, repr(res.exception))
                assert res.exit_code in (0, 1) and "Traceback" not in res.output, (where, res.output)
                if res.exit_code:
                    lines = [x for x in res.output.strip().splitlines() if x and not x.startswith("warning:")]
                    assert len(lines) == 1 and lines[0].startswith("Error:"), (where, res.output)
        finally:
            f.write_bytes(original)
    assert n >= 120
