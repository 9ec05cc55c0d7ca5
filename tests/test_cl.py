"""Class-incremental learning on SplitDigits (scikit-learn's digits, 5 tasks of 2 classes)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import main
from conftest import run_then_kill
from toolkit.cl import STRATEGIES, CLConfig, make_tasks, metrics, run_cl
from toolkit.errors import AugurError
from toolkit.fileio import read_jsonl

ROOT = Path(__file__).resolve().parent.parent


def cfg(**kw) -> CLConfig:
    return CLConfig(**{"epochs": 2, "progress": False, **kw})


def test_metrics_against_a_hand_computed_matrix():
    A = [[0.9, None, None],
         [0.6, 0.8, None],
         [0.3, 0.5, 0.7]]
    m = metrics(A)
    # avg incremental: mean(0.9, mean(.6,.8)=.7, mean(.3,.5,.7)=.5) = 0.7
    assert m["average_incremental_accuracy"] == pytest.approx(0.7)
    assert m["last_accuracy"] == pytest.approx(0.5)
    # forgetting: task 0: max(.9,.6)-.3 = .6; task 1: .8-.5 = .3; mean .45
    assert m["average_forgetting"] == pytest.approx(0.45)


def test_scenario_is_seeded():
    tasks = make_tasks(10, CLConfig())
    assert len(tasks) == 5 and all(len(t) == 2 for t in tasks)
    assert sorted(c for t in tasks for c in t) == list(range(10))
    assert make_tasks(10, CLConfig(seed=1)) != tasks
    assert [len(t) for t in make_tasks(10, CLConfig(initial_classes=4, increment=3))] == [4, 3, 3]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("cl")
    return {name: run_cl("digits", root / name, cfg(strategy=name)) for name in STRATEGIES}


def test_every_strategy_runs_end_to_end(results, tmp_path_factory):
    assert set(results) == {"naive", "replay", "lwf", "ewc", "icarl", "prototype"}
    for name, r in results.items():
        A = r["accuracy_matrix"]
        assert len(A) == 5 and all(v is not None for t, row in enumerate(A) for v in row[: t + 1])
        assert all(v is None for t, row in enumerate(A) for v in row[t + 1:])
        assert r["last_accuracy"] == pytest.approx(sum(A[-1]) / 5)
        assert -1.0 <= r["average_forgetting"] <= 1.0  # negative when later tasks helped earlier ones


def test_replay_and_icarl_forget_less_than_naive(results):
    naive = results["naive"]
    # Naive fine-tuning forgets nearly everything it learnt about earlier tasks.
    assert naive["average_forgetting"] > 0.5
    for name in ("replay", "icarl"):
        assert results[name]["average_forgetting"] < naive["average_forgetting"] - 0.1, name
        assert results[name]["last_accuracy"] > naive["last_accuracy"] + 0.1, name


def test_outputs_written(results, tmp_path):
    out = tmp_path / "r"
    res = CliRunner().invoke(main, ["cl", "--strategy", "replay", "--hp", "memory=100", "--hp", "selection=herding",
                                    "--out", str(out), "--epochs", "1", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "avg inc acc" in res.output and "replay" in res.output
    (row,) = read_jsonl(out / "results.jsonl")
    assert row["hparams"] == {"memory": 100, "selection": "herding"}
    assert (out / "accuracy_matrix.png").stat().st_size > 1000


def test_resume_after_kill_is_exact(tmp_path):
    args = ["cl", "--strategy", "lwf", "--epochs", "2", "--quiet"]
    ref = tmp_path / "ref"
    assert CliRunner().invoke(main, [*args, "--out", str(ref)]).exit_code == 0
    out = tmp_path / "killed"
    run_then_kill([sys.executable, "-m", "cli", *args, "--out", str(out)],
                  lambda: bool(list(out.glob("checkpoints/task-1/meta.json"))))
    assert not (out / "results.jsonl").exists()
    res = CliRunner().invoke(main, [*args, "--out", str(out)])
    assert res.exit_code == 0, res.output
    a, b = read_jsonl(ref / "results.jsonl")[0], read_jsonl(out / "results.jsonl")[0]
    assert a["accuracy_matrix"] == b["accuracy_matrix"]


def test_pretrained_backbone_flag(tmp_path):
    from toolkit.pretrain import pretrain
    from toolkit.train import TrainConfig

    bb = tmp_path / "bb"
    pretrain("digits", bb, cfg=TrainConfig(epochs=1, image_size=16, progress=False))
    r = run_cl("digits", tmp_path / "p", cfg(strategy="prototype", weights=bb))
    assert r["weights"] == str(bb) and r["last_accuracy"] > 0.2


@pytest.mark.parametrize("kw, message", [
    (dict(increment=3), "does not divide"),
    (dict(strategy="replay", hparams={"memory": 0}), "memory"),
    (dict(strategy="gem"), "unknown strategy"),
    (dict(strategy="naive", hparams={"memory": 10}), "no hyper-parameter"),
    (dict(initial_classes=11), "exceeds"),
])
def test_bad_inputs(tmp_path, kw, message):
    with pytest.raises(AugurError, match=message):
        run_cl("digits", tmp_path / "run", cfg(**kw))


def test_bad_inputs_through_the_cli(tmp_path):
    for args, fragment in ((["--strategy", "gem"], "unknown strategy"), (["--increment", "3"], "does not divide"),
                           (["--backbone", str(tmp_path / "missing")], "no backbone weights"),
                           (["--hp", "memory"], "key=value")):
        res = CliRunner().invoke(main, ["cl", "--out", str(tmp_path / "o"), *args])
        assert res.exit_code == 1 and res.output.startswith("Error: ") and fragment in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1


def test_cl_output_of_other_settings_is_refused(tmp_path):
    run_cl("digits", tmp_path / "run", cfg(strategy="prototype"))
    with pytest.raises(AugurError, match="cl run with other settings.*strategy"):
        run_cl("digits", tmp_path / "run", cfg(strategy="naive"))
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("not ours")
    with pytest.raises(AugurError, match="not empty and holds no cl run"):
        run_cl("digits", tmp_path / "theirs", cfg(strategy="prototype"))
    assert [p.name for p in (tmp_path / "theirs").iterdir()] == ["notes.txt"]
