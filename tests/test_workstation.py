"""A shared workstation: threads chosen beside a busy neighbour, logs readable in a file or a pipe, and the
report of an interrupted recipe naming what is missing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import main
from helpers import killed_at
from toolkit.core import threads
from toolkit.core.device import cpu_count
from toolkit.core.files import read_jsonl

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def automatic(monkeypatch):
    """The automatic thread choice, as a user gets it (conftest pins OMP_NUM_THREADS for everything else)."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "_last", None)
    monkeypatch.setattr(threads, "REUSE_SECONDS", 0.0)


def test_a_stage_leaves_a_busy_neighbours_core_alone(automatic):
    cores = cpu_count()
    if cores < 2:
        pytest.skip("one core: there is nothing to leave")
    before = threads.busy_cores(0.5)
    if before > cores - 1:
        pytest.skip(f"the machine is already busy ({before:.1f} of {cores} cores): a neighbour adds nothing to see")
    alone = threads.choose()
    neighbour = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        busy = threads.busy_cores(0.5)
        beside = threads.choose()
    finally:
        neighbour.kill()
        neighbour.wait()
    assert busy - before > 0.6  # the neighbour is seen: a core's worth of CPU time more
    assert beside.why.startswith(f"auto: {cores} cores")
    if round(before) == 0:  # an otherwise idle machine: every core alone, one fewer beside the neighbour
        assert (alone.threads, beside.threads) == (cores, cores - 1)
    else:
        assert beside.threads <= alone.threads
    assert threads.choose(3).threads == 3 and threads.choose(3).why == "--threads"


def test_the_choice_is_recorded_and_threads_overrides_it(tmp_path, automatic):
    args = ["dg", "--test-domains", "0", "--steps", "2", "--checkpoint-freq", "1", "--image-size", "16",
            "--batch-size", "8", "--selection", "training-domain", "--quiet"]
    assert CliRunner().invoke(main, [*args, "--out", str(tmp_path / "a")]).exit_code == 0
    (row,) = read_jsonl(tmp_path / "a" / "results.jsonl")
    assert row["threads_choice"].startswith("auto:") and row["threads"] >= 1
    assert CliRunner().invoke(main, [*args, "--threads", "1", "--out", str(tmp_path / "b")]).exit_code == 0
    (row,) = read_jsonl(tmp_path / "b" / "results.jsonl")
    assert (row["threads"], row["threads_choice"]) == (1, "--threads")


def test_a_log_in_a_pipe_gets_short_lines_not_progress_frames(tmp_path):
    """Under nohup, tee or a scheduler, stderr is not a terminal: no carriage returns, a handful of lines."""
    res = subprocess.run([sys.executable, "-m", "cli", "dg", "--test-domains", "0", "--steps", "40",
                          "--checkpoint-freq", "20", "--image-size", "16", "--batch-size", "8",
                          "--selection", "training-domain", "--out", str(tmp_path / "o")],
                         cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ})
    assert res.returncode == 0, res.stderr[-2000:]
    assert "\r" not in res.stderr and "\x1b[" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("dg ERM")]
    # started, every 10%, done: at most a dozen for one run, each with the figures a bar would show
    assert 3 <= len(lines) <= 12, res.stderr
    assert lines[0].endswith("started") and "done in" in lines[-1] and "40/40 steps (100%)" in lines[-1]
    assert any("img_s" in ln for ln in lines)


def test_the_report_of_an_interrupted_recipe_lists_every_stage(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nstages:\n  extrapolate: {mode: domains, classes: [heron], domains_per_class: 1}\n"
                      "  render: {model: tiny-lcm, device: cpu}\n  pretrain: {epochs: 1, image_size: 16}\n"
                      "  report: {}\n")
    out = tmp_path / "run"
    killed_at([sys.executable, "-m", "cli", "run", str(recipe), "--out", str(out), "--quiet"], "run.after_stage:2")
    res = CliRunner().invoke(main, ["report", str(out), "--out", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    md = (tmp_path / "rep" / "report.md").read_text()
    head = md.split("## Stages of the plan")[1].split("##")[0]
    assert "| extrapolate | done |" in head and "| render | done |" in head
    assert "| pretrain | not started |" in head and "| report |" in head
    assert md.index("## Stages of the plan") < md.index("## Generated images")  # at the top
