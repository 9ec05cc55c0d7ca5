"""Hostile input and hard stops, as a new user's mistakes and a cluster's pre-emptions hit them.

Every case is a real `augur` call: its exit code (1 user error, 2 usage error), its one line, and a check
that nothing was written outside the folder it was given. Kill points (toolkit/core/faults.py) SIGKILL a
real process at the named moments; the same command then resumes to the bytes of an uninterrupted run
and leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cli import main
from helpers import assert_same_files, strip_timing
from toolkit.core.files import read_jsonl, sha256_file, write_jsonl

ROOT = Path(__file__).resolve().parent.parent
ROWS = [{"id": f"{c}--{d}", "class": c, "domain": d, "prompt": f"a {c}, {d}"}
        for c in ("heron", "guitar") for d in ("neon", "origami")]


def tree(root: Path, skip: Path | None = None) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")
            if skip is None or not (p == skip or skip in p.parents)}


def one_line(res, code: int, *fragments: str) -> str:
    assert res.exit_code == code, (res.exit_code, res.output)
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in res.output, res.output
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


def augur(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """A working folder and a snapshot of everything in it, to prove nothing is written outside --out."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return tmp_path


# ----------------------------------------------------------------------------- names that become paths
def test_a_model_name_cannot_escape_the_card_store(sandbox, tmp_path):
    from toolkit.core import paths

    gguf = sandbox / "m.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 64)
    before = tree(paths.home()), tree(sandbox)
    for name in ("../../../ESCAPED", "a/b", ".hidden", "x" * 200):
        one_line(augur("models", "import", name, str(gguf), "--kind", "gguf"), 1, "not a valid name")
    assert (tree(paths.home()), tree(sandbox)) == before
    assert not list(Path("/").glob("ESCAPED*")) and not list(paths.home().parent.parent.glob("ESCAPED*"))


def test_labels_never_share_a_folder_and_hidden_classes_are_trained(sandbox, tiny):
    rows = [{"id": f"r{i}", "class": c, "domain": "neon", "prompt": f"a {c}"}
            for i, c in enumerate(["AC/DC", "AC_DC", "AC DC", ".hidden", "x" * 300])]
    rows.append({"id": "y" * 300, "class": "dog", "domain": "d" * 300, "prompt": "a dog"})
    write_jsonl(sandbox / "labels.jsonl", rows)
    res = augur("render", str(sandbox / "labels.jsonl"), "--model", "tiny-lcm", "--out", str(sandbox / "r"), "--quiet")
    assert res.exit_code == 0, res.output
    manifest = read_jsonl(sandbox / "r" / "manifest.jsonl")
    assert [m["class"] for m in manifest] == [r["class"] for r in rows]  # exact labels kept
    folders = {str(Path(m["path"]).parent) for m in manifest}
    assert len(folders) == len(rows)  # six labels, six folders
    assert all(len(part) <= 84 and not part.startswith(".") for m in manifest for part in Path(m["path"]).parts)
    res = augur("pretrain", "--data", str(sandbox / "r"), "--epochs", "1", "--image-size", "16", "--quiet",
                "--out", str(sandbox / "bb"))
    assert res.exit_code == 0, res.output
    card = json.loads((sandbox / "bb" / "card.json").read_text())
    assert sorted(card["classes"]) == sorted({r["class"] for r in rows}) and card["images"] == len(rows)


@pytest.mark.parametrize("args, code, fragment", [
    (["extrapolate", "domains", "--classes", "a\nb"], 1, "control character"),
    (["extrapolate", "domains", "--classes", "dog", "--seed", "-1"], 2, "--seed"),
    (["render", "prompts.jsonl", "--seed", "-1"], 2, "--seed"),
    (["render", "prompts.jsonl", "--guidance", "-3"], 2, "--guidance"),
    (["render", "prompts.jsonl", "--size", "30"], 2, "multiple of 8"),
    (["pretrain", "--data", "digits", "--lr", "nan"], 2, "finite"),
    (["pretrain", "--data", "digits", "--epochs", "0"], 2, ">= 1"),
    (["dg", "--seeds", "-1"], 2, "--seeds"),
    (["dg", "--seeds", "4294967296"], 2, "--seeds"),
    (["dg", "--lr", "nan"], 2, "finite"),
    (["dg", "--batch-size", "1"], 2, ">= 2"),
    (["dg", "--algorithm", "CORAL", "--hp", "mmd_gamma=-1"], 2, "mmd_gamma must be >= 0"),
    (["dg", "--test-domains", "90", "--steps", "2"], 1, "no domain '90'"),
    (["cl", "--seed", "-1"], 2, "--seed"),
    (["cl", "--image-size", "4"], 2, "--image-size"),
    (["cl", "--strategy", "lwf", "--hp", "alpha=high"], 2, "alpha takes a number"),
    (["cl", "--strategy", "ewc", "--hp", "lambda=[1,2]"], 2, "lambda takes a number"),
    (["cl", "--strategy", "gem"], 2, "'gem' is not one of"),
    (["cl", "--increment", "3"], 1, "does not divide"),
    (["cl", "--initial-classes", "10"], 1, "not class-incremental"),
    (["run", "no-such-recipe.yaml"], 1, "no such recipe"),
    (["report", "no-such-folder"], 1, "no such folder"),
])
def test_user_mistakes_give_one_line(sandbox, args, code, fragment):
    before = tree(sandbox)
    one_line(augur(*args, "--out", str(sandbox / "o")) if args[0] not in ("report",) else augur(*args), code, fragment)
    assert tree(sandbox) == before  # nothing written, not even the output folder


def test_nul_bytes_and_one_class_scenarios(sandbox):
    (sandbox / "classes.txt").write_bytes(b"dog\ncat\x00\n")
    one_line(augur("extrapolate", "domains", "--classes-file", "classes.txt", "--out", "o"), 1, "NUL")
    one_class = sandbox / "one"
    (one_class / "photo" / "cat").mkdir(parents=True)
    for i in range(4):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(one_class / "photo" / "cat" / f"{i}.png")
    one_line(augur("cl", "--data", str(one_class), "--out", "o"), 1, "at least 2 classes")
    assert not (sandbox / "o").exists()
    (one_class / "photo" / "dog").mkdir()
    for i in range(4):
        Image.fromarray(np.full((8, 8, 3), 30 * i, np.uint8)).save(one_class / "photo" / "dog" / f"{i}.png")
    # one domain, trained on: nothing would be tested, and an empty table must not look like a result
    one_line(augur("dg", "--data", str(one_class), "--single-source", "photo", "--out", "o"), 1,
             "leaves no domain to test on")
    assert not (sandbox / "o").exists()


@pytest.mark.parametrize("stage", ["extrapolate", "render", "pretrain", "dg", "cl", "run"])
def test_out_that_is_a_file_is_refused(sandbox, stage):
    (sandbox / "taken").write_text("mine")
    args = {"extrapolate": ["extrapolate", "domains", "--classes", "dog"], "render": ["render", "prompts.jsonl"],
            "pretrain": ["pretrain", "--data", "digits"], "dg": ["dg"], "cl": ["cl"],
            "run": ["run", str(ROOT / "recipes" / "quickstart.yaml")]}[stage]
    one_line(augur(*args, "--out", "taken"), 1, "is a file, not a folder")
    assert (sandbox / "taken").read_text() == "mine"


def test_foreign_folders_are_never_overwritten(sandbox):
    (sandbox / "users").mkdir()
    (sandbox / "users" / "run.json").write_text("{\"mine\": true}")
    one_line(augur("extrapolate", "domains", "--classes", "dog", "--out", "users", "--force"), 1, "holds no extrapolate run")
    (sandbox / "card").mkdir()
    (sandbox / "card" / "card.json").write_text("{}")
    one_line(augur("pretrain", "--data", "digits", "--out", "card", "--force"), 1, "holds no pretrain run")
    (sandbox / "dgrun").mkdir()
    (sandbox / "dgrun" / "dg.json").write_text('{"stage": "dg", "identity": {}}')
    one_line(augur("pretrain", "--data", "digits", "--out", "dgrun"), 1, "holds a dg run, not a pretrain run")
    assert (sandbox / "users" / "run.json").read_text() == "{\"mine\": true}"
    assert sorted(p.name for p in (sandbox / "card").iterdir()) == ["card.json"]
    assert sorted(p.name for p in (sandbox / "dgrun").iterdir()) == ["dg.json"]


# ----------------------------------------------------------------------------- kill points
def cli(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def killed_then_resumed(args: list[str], point: str, out: Path, ref: Path):
    first = cli(*args, "--out", str(out), env={"AUGUR_KILL_AT": point})
    assert first.returncode == -9, (point, first.returncode, first.stderr[-2000:])
    # the resume runs in this process (the killed one was a process of its own): it reads only what the
    # killed run left in `out`, and spares a second interpreter start-up per kill point
    again = augur(*args, "--out", str(out))
    assert again.exit_code == 0, (again.output[-2000:], repr(again.exception))
    assert tree(out) == tree(ref), (point, sorted(tree(out) ^ tree(ref)))  # nothing extra left behind
    # and every file byte for byte, timing aside (a report's text prints seconds and rates: masked)
    assert_same_files(ref, out, masked_text=(".md", ".html"), own_path=True)
    return again


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The never-interrupted run of a command line, made once per module and shared by its kill points."""
    made: dict[tuple[str, ...], Path] = {}

    def ref(args: list[str]) -> Path:
        if tuple(args) not in made:
            out = tmp_path_factory.mktemp("ref") / "ref"
            res = cli(*args, "--out", str(out))
            assert res.returncode == 0, res.stderr[-2000:]
            made[tuple(args)] = out
        return made[tuple(args)]

    return ref


@pytest.fixture(scope="module")
def render_ref(tmp_path_factory, tiny):
    root = tmp_path_factory.mktemp("render-ref")
    write_jsonl(root / "p.jsonl", ROWS)
    args = ["render", str(root / "p.jsonl"), "--model", "tiny-lcm", "--images-per-prompt", "2", "--batch-size", "2",
            "--quiet"]
    assert cli(*args, "--out", str(root / "ref")).returncode == 0
    return args, root / "ref"


@pytest.mark.slow
@pytest.mark.parametrize("point", ["render.after_png:3", "render.after_batch:2", "append@manifest:2",
                                   "rename@manifest.jsonl", "rename@contact_sheet", "rename@.png:4"])
def test_render_resumes_to_the_same_bytes_from_every_kill_point(tmp_path, render_ref, point):
    args, ref = render_ref
    out = tmp_path / "out"
    killed_then_resumed(args, point, out, ref)
    for rel in tree(ref):
        if (ref / rel).is_file() and rel != ".augur.lock":
            assert (out / rel).read_bytes() == (ref / rel).read_bytes(), rel


@pytest.mark.slow
def test_extrapolate_resumes_from_its_kill_points(tmp_path, monkeypatch):
    args = ["extrapolate", "domains", "--classes", "heron,guitar", "-n", "2", "--quiet", "--min-fraction", "0"]
    env_cache = {"AUGUR_CACHE_DIR": str(tmp_path / "ref-cache")}
    ref = tmp_path / "ref"
    assert cli(*args, "--out", str(ref), env=env_cache).returncode == 0
    for point in ("extrapolate.request:2", "extrapolate.before_prompts", "rename@prompts.jsonl"):
        out = tmp_path / point.replace(":", "_").replace("@", "_")
        cache = {"AUGUR_CACHE_DIR": str(tmp_path / f"cache-{out.name}")}
        first = cli(*args, "--out", str(out), env={**cache, "AUGUR_KILL_AT": point})
        assert first.returncode == -9, (point, first.stderr[-1500:])
        assert not (out / "prompts.jsonl").exists()  # nothing looks complete
        monkeypatch.setenv("AUGUR_CACHE_DIR", cache["AUGUR_CACHE_DIR"])
        again = augur(*args, "--out", str(out))  # resumed in this process, as killed_then_resumed does
        assert again.exit_code == 0, (again.output[-1500:], repr(again.exception))
        assert (out / "prompts.jsonl").read_bytes() == (ref / "prompts.jsonl").read_bytes()
        assert tree(out) == tree(ref)


@pytest.mark.slow
@pytest.mark.parametrize("point", ["loop.step:3", "loop.after_checkpoint:1", "rename@progress", "pretrain.after_save"])
def test_pretrain_resumes_from_its_kill_points(tmp_path, point, uninterrupted):
    # the kill points are the loop's and the stage's, whatever the network: timm's 0.37M-parameter test ResNet
    # (tests/test_train.py, test_dg.py and test_cl.py resume a resnet18 exactly)
    args = ["pretrain", "--data", "digits", "--epochs", "2", "--image-size", "16", "--batch-size", "256",
            "--backbone", "test_resnet", "--quiet"]
    ref = uninterrupted(args)
    out = tmp_path / "out"
    first = cli(*args, "--out", str(out), env={"AUGUR_KILL_AT": point})
    assert first.returncode == -9 or point == "rename@progress", first.stderr[-1500:]
    again = augur(*args, "--out", str(out))  # resumed in this process, as killed_then_resumed does
    assert again.exit_code == 0, (again.output[-1500:], repr(again.exception))
    a, b = json.loads((ref / "card.json").read_text()), json.loads((out / "card.json").read_text())
    assert a["files"] == b["files"] and [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]
    assert tree(out) == tree(ref)


@pytest.mark.slow
@pytest.mark.parametrize("point", ["loop.step:5", "loop.after_checkpoint:2", "dg.after_run", "dg.before_results"])
def test_dg_resumes_from_its_kill_points(tmp_path, point, uninterrupted):
    args = ["dg", "--test-domains", "0", "--steps", "12", "--checkpoint-freq", "4", "--image-size", "16",
            "--batch-size", "8", "--selection", "training-domain,oracle", "--backbone", "test_resnet", "--quiet"]
    ref = uninterrupted(args)
    killed_then_resumed(args, point, tmp_path / "out", ref)
    assert strip_timing(read_jsonl(ref / "results.jsonl")) == strip_timing(read_jsonl(tmp_path / "out" / "results.jsonl"))


@pytest.mark.slow
@pytest.mark.parametrize("point", ["loop.step:7", "cl.after_task:2", "cl.after_task:5"])
def test_cl_resumes_from_its_kill_points(tmp_path, point, uninterrupted):
    args = ["cl", "--strategy", "replay", "--epochs", "1", "--image-size", "16", "--backbone", "test_resnet", "--quiet"]
    ref = uninterrupted(args)
    killed_then_resumed(args, point, tmp_path / "out", ref)
    # the result rows in particular: the same numbers, timing fields (wall time, images/s) aside
    assert strip_timing(read_jsonl(ref / "results.jsonl")) == strip_timing(read_jsonl(tmp_path / "out" / "results.jsonl"))


@pytest.mark.slow
def test_run_resumes_between_stages(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nstages:\n  extrapolate: {mode: domains, classes: [heron], domains_per_class: 1}\n"
                      "  render: {model: tiny-lcm}\n  report: {}\n")
    args = ["run", str(recipe), "--quiet"]
    ref = tmp_path / "ref"
    assert cli(*args, "--out", str(ref)).returncode == 0
    killed_then_resumed(args, "run.after_stage:2", tmp_path / "out", ref)


# ----------------------------------------------------------------------------- two writers
def test_two_renders_of_one_run_never_corrupt_it(tmp_path, render_ref):
    args, ref = render_ref
    out = tmp_path / "out"
    # The first writer holds after its first batch until the second has been refused: no guessing how long
    # a fresh Python takes to import torch.
    release = tmp_path / "release"
    hold = {"AUGUR_HOLD_AT": f"render.after_batch={release}"}
    first = subprocess.Popen([sys.executable, "-m", "cli", *args, "--batch-size", "1", "--out", str(out)], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **hold})
    try:
        reached = Path(f"{release}.reached")
        while not reached.exists():
            assert first.poll() is None, first.communicate()
            time.sleep(0.02)
        second = cli(*args, "--batch-size", "1", "--out", str(out))
    finally:
        release.write_text("go")
    assert second.returncode == 1 and "another process is writing to" in second.stderr, second.stderr
    assert first.wait(timeout=300) == 0
    rows = read_jsonl(out / "manifest.jsonl")
    assert len(rows) == len({r["image_id"] for r in rows}) == 8
    assert (out / "manifest.jsonl").read_bytes() == (ref / "manifest.jsonl").read_bytes()


def test_two_shards_write_side_by_side_then_merge(tmp_path, render_ref):
    args, ref = render_ref
    out = tmp_path / "out"
    procs = [subprocess.Popen([sys.executable, "-m", "cli", *args, "--shard", f"{i}/2", "--out", str(out)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()[-2000:]
    res = cli("render", "merge", str(out))
    assert res.returncode == 0, res.stderr
    rows = read_jsonl(out / "manifest.jsonl")
    assert len(rows) == len({r["image_id"] for r in rows}) == 8
    assert (out / "manifest.jsonl").read_bytes() == (ref / "manifest.jsonl").read_bytes()
    assert not list(out.rglob("*.part"))


# ----------------------------------------------------------------------------- full disk, read-only folders
@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN): the disk-full cases need one")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_full_disk_stops_with_one_line_and_resumes_when_space_is_back(small_disk, render_ref):
    args, ref = render_ref
    out = small_disk / "out"
    ballast = small_disk / "ballast"
    ballast.write_bytes(b"\0" * (540 * 1024))
    res = cli(*args, "--out", str(out))
    assert res.returncode == 1, res.stderr[-2000:]
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith("Error: ") and "no space left" in line and "Traceback" not in res.stderr
    assert not (out / "contact_sheet.png").exists()  # nothing looks complete
    for p in out.rglob("*.png"):  # whatever was written is whole
        assert any(r["path"] == p.relative_to(out).as_posix() and r["sha256"] == sha256_file(p)
                   for r in read_jsonl(out / "manifest.jsonl", tolerate_torn_tail=True)) or p.name.startswith(".")
    ballast.unlink()
    res = cli(*args, "--out", str(out))
    assert res.returncode == 0, res.stderr[-2000:]
    assert (out / "manifest.jsonl").read_bytes() == (ref / "manifest.jsonl").read_bytes()
    assert not list(out.rglob("*.part"))


def test_read_only_folders_give_one_line_for_every_stage(small_disk, sandbox, tiny):
    ro = small_disk / "ro"
    ro.mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    for args in (["extrapolate", "domains", "--classes", "dog"], ["render", "prompts.jsonl", "--model", "tiny-lcm"],
                 ["pretrain", "--data", "digits"], ["dg", "--steps", "2"], ["cl", "--epochs", "1"],
                 ["run", str(ROOT / "recipes" / "quickstart.yaml")]):
        res = augur(*args, "--out", str(ro / args[0]))
        one_line(res, 1, "read-only")


# ----------------------------------------------------------------------------- what the second outside audit found
def test_a_torn_last_line_of_dg_results_is_repaired_not_appended_to(tmp_path):
    """A kill in the middle of appending results.jsonl leaves a fragment; the next run cuts it off instead of
    writing its rows onto it (which lost that row and made every later run fail on line 2)."""
    args = ["dg", "--test-domains", "0", "--steps", "2", "--checkpoint-freq", "1", "--image-size", "16",
            "--batch-size", "8", "--selection", "training-domain", "--quiet"]
    out = tmp_path / "out"
    assert augur(*args, "--out", str(out)).exit_code == 0
    good = (out / "results.jsonl").read_text()
    with open(out / "results.jsonl", "a") as f:
        f.write('{"trial": "te')  # a torn row
    res = augur(*args, "--seeds", "0,1", "--out", str(out))  # a second trial appends
    assert res.exit_code == 0, res.output
    rows = read_jsonl(out / "results.jsonl")  # every line parses
    assert len(rows) == 2 and (out / "results.jsonl").read_text().startswith(good)
    assert augur(*args, "--seeds", "0,1", "--out", str(out)).exit_code == 0  # and later runs still read it


def test_a_failed_first_run_does_not_pin_its_settings(sandbox):
    """extrapolate with a truncated model, dg with corrupt weights: they fail; the corrected command is a new
    run, not 'another run with other settings'."""
    (sandbox / "truncated.gguf").write_bytes(b"GGUF" + b"\0" * 64)
    one_line(augur("extrapolate", "domains", "--classes", "dog", "-n", "1", "--model", "truncated.gguf",
                   "--out", "ex"), 1)
    assert not (sandbox / "ex").exists()
    (sandbox / "corrupt.safetensors").write_bytes(b"not weights")
    one_line(augur("dg", "--weights", "corrupt.safetensors", "--test-domains", "0", "--steps", "2", "--out", "dg"), 1,
             "cannot read the weights")
    res = augur("dg", "--weights", "none", "--test-domains", "0", "--steps", "2", "--checkpoint-freq", "1",
                "--image-size", "16", "--batch-size", "8", "--quiet", "--out", "dg")
    assert res.exit_code == 0, res.output


def test_dg_on_two_domains_says_before_training_what_leave_one_out_cannot_do(sandbox):
    two = sandbox / "two"
    for d in ("a", "b"):
        for c in ("x", "y"):
            (two / d / c).mkdir(parents=True)
            for i in range(5):
                Image.fromarray(np.full((8, 8, 3), 20 * i + (d == "b") * 100, np.uint8)).save(two / d / c / f"{i}.png")
    one_line(augur("dg", "--data", str(two), "--selection", "leave-one-out", "--steps", "2", "--out", "o"), 1,
             "leave-one-domain-out selection on 2 domains", "3 or more domains")
    assert not (sandbox / "o").exists()  # refused before anything trained or was written
    res = augur("dg", "--data", str(two), "--steps", "2", "--checkpoint-freq", "1", "--image-size", "16",
                "--batch-size", "4", "--quiet", "--out", "o")  # the default selections: one run a domain
    assert res.exit_code == 0, res.output
    assert {r["test_domain"] for r in read_jsonl(sandbox / "o" / "results.jsonl")} == {"a", "b"}


def test_csv_import_keeps_ids_unique_and_says_what_it_merged_or_dropped(sandbox):
    f = sandbox / "items.csv"
    f.write_text("subtype,item_name,item_description,SD_prompt,extra\n"
                 "tools,x,one,a photo of x,1\ntools,x,two,a photo of x again,2\nother,x-2,three,a photo,3\n"
                 "other,x,four,x in the other subtype,4\n")
    res = augur("extrapolate", "import", str(f), "--out", "imp")
    assert res.exit_code == 0, res.output
    ids = [r["id"] for r in read_jsonl(sandbox / "imp" / "prompts.jsonl")]
    assert len(ids) == len(set(ids)) == 4
    assert "class 'x' appears under 2 subtypes (tools, other)" in res.stderr
    assert "column(s) extra" in res.stderr
    run = json.loads((sandbox / "imp" / "run.json").read_text())
    assert run["provenance"]["ignored_columns"] == ["extra"] and run["provenance"]["merged_classes"] == {
        "x": ["tools", "other"]}
    assert augur("render", str(sandbox / "imp" / "prompts.jsonl"), "--model", "tiny-lcm", "--device", "cpu",
                 "--quiet", "--out", "r").exit_code == 0  # which render accepts


@pytest.mark.parametrize("text, fragment", [
    ("name: r\nstages:\n  dg: {seeds: []}\n", "stages.dg.seeds: give at least one value"),
    ("name: r\nstages:\n  dg: {steps: 3}\n  dg: {steps: 4}\n", "key 'dg' is given twice"),
    ("name: r\nstages:\n  cl: {class_orders: [nofile.txt]}\n", "stages.cl.class_orders: nofile.txt is neither a seed"),
    ("name: r\nstages:\n  extrapolate: {}\n  render: {}\n  pretrain: {data: pretrain}\n",
     "stages.pretrain.data: 'pretrain' is a stage"),
])
def test_recipes_that_would_fail_at_run_time_fail_the_dry_run(sandbox, text, fragment):
    recipe = sandbox / "r.yaml"
    recipe.write_text(text)
    one_line(augur("run", str(recipe), "--out", "o", "--dry-run"), 1, fragment)
    assert not (sandbox / "o").exists()


def test_report_and_class_order_with_foreign_files(sandbox):
    (sandbox / "dgrun").mkdir()
    (sandbox / "dgrun" / "dg.json").write_text('{"stage": "dg", "identity": {}}')
    (sandbox / "dgrun" / "results.jsonl").write_text('{"something": "else"}\n')
    res = augur("report", "dgrun")
    assert res.exit_code == 0, res.output  # a report, without the foreign rows
    assert "not DG result rows" in (sandbox / "dgrun" / "report" / "report.md").read_text()
    (sandbox / "order.bin").write_bytes(bytes(range(256)))
    one_line(augur("cl", "--class-order", "order.bin", "--out", "o"), 1, "order.bin", "cannot read")


def test_the_refusal_says_force_once(sandbox):
    assert augur("pretrain", "--data", "digits", "--epochs", "1", "--image-size", "16", "--quiet",
                 "--out", "bb").exit_code == 0
    line = one_line(augur("pretrain", "--data", "digits", "--epochs", "2", "--image-size", "16", "--out", "bb"), 1)
    assert line.count("--force") == 1, line


def test_a_full_disk_while_a_checkpoint_is_written_is_one_line(small_disk):
    """safetensors reports a failed write as its own error type ("os error 28"): still one line, and the resume
    afterwards is exact (the checkpoint was not published)."""
    out = small_disk / "pt"
    ballast = small_disk / "ballast"
    ballast.write_bytes(b"\0" * (560 * 1024))
    res = cli("pretrain", "--data", "digits", "--epochs", "1", "--image-size", "16", "--quiet", "--out", str(out))
    assert res.returncode == 1, res.stderr[-2000:]
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith("Error: ") and "no space left" in line and "Traceback" not in res.stderr
