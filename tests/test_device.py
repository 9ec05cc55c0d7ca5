"""Every DG algorithm (with and without SWAD) and every CL strategy runs wherever torch runs, and no training
step mixes devices or waits for the GPU.

Each runs a few real steps through the CLI on every device torch sees: the CPU here and in CI, CUDA too
when a GPU is visible. On the CPU they also run under the device audit (learn/audit.py) with the path
CUDA takes forced (AUGUR_SYNC_FREE=1: fused optimizers, the non-finite guard decided on the device):
a tensor factory without `device=` in Augur's code, or a host read of a device tensor inside a step,
stops the run. That is how a device mix (RanPAC's head once built `torch.eye` on the CPU beside CUDA
buffers) is caught on a machine without a GPU; the last test breaks exactly that and watches it caught.

The subject is Augur's code around the network, so the runs take timm's test ResNet (`--backbone test_resnet`:
timm's ResNet code at 0.37M parameters), a tenth of a resnet18's time: where a tensor lives does not depend on
the network's width.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cli import main
from toolkit.core.files import read_jsonl
from toolkit.stages.smoke_data import make_cl_data, make_dg_data
from toolkit.stages.cl.strategies import STRATEGIES
from toolkit.stages.dg.algorithms import ALGORITHMS

DEVICES = ["cpu", "cpu-audited"] + (["cuda"] if torch.cuda.is_available() else [])
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("small")
    make_dg_data(root / "dg", ["a", "b", "c"], [f"c{i}" for i in range(4)])
    make_cl_data(root / "cl", 6)
    return root


@pytest.fixture
def on(request, monkeypatch):
    """The device: cpu; cpu with the audit and CUDA's path forced; cuda (hidden from nothing)."""
    device = request.param
    if device == "cpu-audited":
        monkeypatch.setenv("AUGUR_AUDIT", "1")
        monkeypatch.setenv("AUGUR_SYNC_FREE", "1")
    if device.startswith("cpu") and torch.cuda.is_available():
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the CPU path on a GPU machine too
    return device


def _ok(res):
    assert res.exit_code == 0, (res.output, repr(res.exception))
    return res


@pytest.mark.parametrize("on", DEVICES, indirect=True)
@pytest.mark.parametrize("swad", [False, True], ids=["plain", "swad"])
@pytest.mark.parametrize("algorithm", ALGORITHMS.names())
def test_every_dg_algorithm_runs_on_every_device(small_data, tmp_path, on, algorithm, swad):
    args = ["dg", "--data", str(small_data / "dg"), "--algorithm", algorithm, "--test-domains", "a", "--steps", "4",
            "--checkpoint-freq", "2", "--image-size", "16", "--batch-size", "4", "--backbone", "test_resnet", "--quiet",
            "--out", str(tmp_path / "o")]
    if swad:
        args += ["--swad", "--hp", "swad_n_converge=1", "--hp", "swad_n_tolerance=1", "--hp", "swad_bn_steps=2"]
    _ok(CliRunner().invoke(main, args))
    rows = read_jsonl(tmp_path / "o" / "results.jsonl")
    assert rows and all(r["device"] == ("cuda" if on == "cuda" else "cpu") for r in rows)
    assert all(0.0 <= r["test_acc"] <= 1.0 for r in rows)


@pytest.mark.parametrize("on", DEVICES, indirect=True)
@pytest.mark.parametrize("strategy", STRATEGIES.names())
def test_every_cl_strategy_runs_on_every_device(small_data, tmp_path, on, strategy):
    args = ["cl", "--data", str(small_data / "cl"), "--strategy", strategy, "--epochs", "1", "--image-size", "16",
            "--batch-size", "8", "--backbone", "test_resnet", "--quiet", "--out", str(tmp_path / "o")]
    if strategy in ("ranpac", "fsa"):
        args += ["--hp", "M=32"]
    if strategy == "ewc":
        args += ["--hp", "fisher_samples=16"]
    _ok(CliRunner().invoke(main, args))
    (row,) = [r for r in read_jsonl(tmp_path / "o" / "results.jsonl") if r["final"]]
    assert row["device"] == ("cuda" if on == "cuda" else "cpu") and 0.0 <= row["last_accuracy"] <= 1.0


@pytest.mark.parametrize("on", DEVICES, indirect=True)
def test_pretrain_runs_on_every_device(small_data, tmp_path, on):
    _ok(CliRunner().invoke(main, ["pretrain", "--data", str(small_data / "dg"), "--epochs", "1", "--image-size", "16",
                                  "--batch-size", "8", "--backbone", "test_resnet", "--quiet", "--out",
                                  str(tmp_path / "o")]))


def test_the_audit_catches_a_device_mix_and_a_host_read_without_a_gpu(small_data, tmp_path, monkeypatch):
    """Break the property on purpose: RanPAC's ridge solve with `torch.eye` made on the CPU (the crash seen on
    an H200), and a per-step `.item()` in an algorithm; the audited CPU run names each."""
    monkeypatch.setenv("AUGUR_AUDIT", "1")
    monkeypatch.setenv("AUGUR_SYNC_FREE", "1")
    from toolkit.stages.cl import strategies as S
    from toolkit.stages.dg import algorithms as A

    def eye_on_the_host(self, feats, labels):
        H = self.project(feats.to(self.G.device))
        Y = torch.nn.functional.one_hot(labels.to(self.G.device), self.n_classes).float()
        with torch.no_grad():
            self.Q += H.T @ Y
            self.G += H.T @ H
            self.Wo.copy_(torch.linalg.solve(self.G + torch.eye(self.G.size(dim=0)), self.Q).T)
        return {"ridge": 1.0}

    monkeypatch.setattr(S.RidgeHead, "add", eye_on_the_host)
    res = CliRunner().invoke(main, ["cl", "--data", str(small_data / "cl"), "--strategy", "ranpac", "--hp", "M=16",
                                    "--image-size", "16", "--quiet", "--out", str(tmp_path / "r")])
    assert res.exit_code != 0 and "eye() without device=" in str(res.exception), res.output
    original = A.ERM.update

    def reads_the_loss(self, minibatches):
        out = original(self, minibatches)
        return {"loss": out["loss"].item()}  # DomainBed's own form: a wait for the GPU every step

    monkeypatch.setattr(A.ERM, "update", reads_the_loss)
    res = CliRunner().invoke(main, ["dg", "--data", str(small_data / "dg"), "--test-domains", "a", "--steps", "2",
                                    "--checkpoint-freq", "1", "--image-size", "16", "--batch-size", "4", "--quiet",
                                    "--out", str(tmp_path / "d")])
    assert res.exit_code != 0 and "host read (item) of a device tensor" in str(res.exception), res.output
    assert "test_device.py" in str(res.exception)  # the line that reads, wherever it is written
