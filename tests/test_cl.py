"""`augur cl`: the standard class-incremental metrics, each strategy's defining property, runs on real digits."""

from __future__ import annotations

import copy
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from click.testing import CliRunner

from cli import main
from conftest import run_then_kill
from toolkit.core.errors import AugurError
from toolkit.core.files import read_jsonl
from toolkit.learn.loop import Trainer, accelerator_for
from toolkit.learn.transforms import DataConfig
from toolkit.stages.cl import strategies as S
from toolkit.stages.cl.config import CLConfig
from toolkit.stages.cl.metrics import matrix, metrics
from toolkit.stages.cl.stage import class_order, make_tasks, run_cl


def cfg(**kw) -> CLConfig:
    return CLConfig(**{"epochs": 2, "image_size": 16, "quiet": True, **kw})


def test_metrics_pool_the_test_samples_of_unequal_tasks():
    """B4-Inc2 on 10 classes: tasks of 4, 2, 2, 2 classes; A_t pools their samples."""
    counts = [[[90, 100]],
              [[60, 100], [45, 50]],
              [[50, 100], [30, 50], [40, 50]],
              [[40, 100], [20, 50], [25, 50], [48, 50]]]
    m = metrics(counts)
    # A_t by hand: correct over all samples seen so far
    A = [90 / 100, (60 + 45) / 150, (50 + 30 + 40) / 200, (40 + 20 + 25 + 48) / 250]
    assert m["incremental_accuracy"] == pytest.approx(A)
    assert m["average_incremental_accuracy"] == pytest.approx(np.mean(A))
    assert m["last_accuracy"] == pytest.approx(A[-1])
    # the mean of per-task accuracies differs whenever tasks differ in size: the old, wrong definition
    assert m["last_accuracy"] != pytest.approx(np.mean([0.4, 0.4, 0.5, 0.96]))
    # Chaudhry forgetting: task 0: max(.9,.6,.5) - .4; task 1: max(.9,.6) - .4; task 2: .8 - .5
    assert m["average_forgetting"] == pytest.approx(np.mean([0.5, 0.5, 0.3]))
    a = matrix(counts, 4)
    assert a[1] == [0.6, 0.9, None, None] and a[3][3] == pytest.approx(0.96)


def test_class_order_follows_pycil_and_files(tmp_path):
    classes = [str(i) for i in range(10)]
    np.random.seed(1993)
    assert class_order(cfg(class_order="1993"), classes) == np.random.permutation(10).tolist()
    f = tmp_path / "order.txt"
    f.write_text("\n".join(reversed(classes)) + "\n")
    assert class_order(cfg(class_order=str(f)), classes) == list(range(9, -1, -1))
    f.write_text("1\n2\n")
    with pytest.raises(AugurError, match="missing: 0, 3"):
        class_order(cfg(class_order=str(f)), classes)
    assert [len(t) for t in make_tasks(list(range(10)), 4, 2)] == [4, 2, 2, 2]
    with pytest.raises(AugurError, match="does not divide"):
        make_tasks(list(range(10)), 4, 4)
    with pytest.raises(AugurError, match="not class-incremental"):
        make_tasks(list(range(2)), 2, 1)
    with pytest.raises(AugurError, match="at least 2 classes"):
        make_tasks([0], 1, 1)


class Feats(nn.Module):
    """A real tiny backbone: flattens its (already featurised) input through a fixed identity."""

    def __init__(self, d: int):
        super().__init__()
        self.lin = nn.Linear(d, d, bias=False)
        with torch.no_grad():
            self.lin.weight.copy_(torch.eye(d))
        self.num_features = d

    def forward(self, x):
        return self.lin(x.flatten(1))


def ctx(n_classes: int = 4, size: int = 2):
    return S.Context(DataConfig(size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)), 0, n_classes, size, 1e-2, 0.0, 8)


def test_ncm_is_the_nearest_mean_rule_by_cosine():
    head = S.NCMHead(3, 3)
    feats = torch.tensor([[1.0, 0, 0], [3.0, 0.2, 0], [0, 1.0, 0], [0, 2.0, 0.5], [0, 0, 1.0], [0.1, 0, 4.0]])
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    head.add(feats, labels)
    means = torch.stack([feats[labels == c].mean(0) for c in range(3)])
    assert torch.allclose(head.prototypes, means)
    queries = torch.randn(50, 3, generator=torch.Generator().manual_seed(0))
    by_hand = torch.stack([torch.stack([F.cosine_similarity(q, m, dim=0) for m in means]) for q in queries]).argmax(1)
    assert torch.equal(head.logits(queries).argmax(1), by_hand)


def test_ranpac_head_is_the_closed_form_ridge_solution():
    torch.manual_seed(0)
    d, M, n = 6, 40, 4
    head = S.RidgeHead(d, n, M, seed=1)
    f1, y1 = torch.randn(30, d), torch.randint(0, 2, (30,))
    f2, y2 = torch.randn(24, d) + 1, torch.randint(2, 4, (24,))
    info1 = head.add(f1, y1)
    info2 = head.add(f2, y2)
    H = torch.cat([F.relu(f1 @ head.W_rand), F.relu(f2 @ head.W_rand)]).double()
    Y = F.one_hot(torch.cat([y1, y2]), n).double()
    # G and Q accumulate over tasks; W_o solves (G + lambda I) W = Q with the lambda chosen for the last task
    assert torch.allclose(head.G.double(), H.T @ H, rtol=1e-4, atol=1e-3)
    expected = torch.linalg.solve(H.T @ H + info2["ridge"] * torch.eye(M, dtype=torch.float64), H.T @ Y).T
    assert torch.allclose(head.Wo.double(), expected, rtol=1e-3, atol=1e-4)
    # lambda: the candidate 10^-8..10^8 with the lowest MSE on the last 20% of the task's features
    H2, Y2 = F.relu(f2 @ head.W_rand).double(), F.one_hot(y2, n).double()
    k = int(len(H2) * 0.8)
    losses = [((H2[k:] @ torch.linalg.solve(H2[:k].T @ H2[:k] + r * torch.eye(M, dtype=torch.float64),
                                            H2[:k].T @ Y2[:k])) - Y2[k:]).pow(2).mean().item() for r in S.RIDGES]
    assert info2["ridge"] == S.RIDGES[int(np.argmin(losses))] and info1["ridge"] in S.RIDGES


def test_ewc_penalty_is_zero_at_the_old_parameters_and_grows_away_from_them():
    c = ctx()
    ewc = S.EWC(Feats(12), {"lambda": 1.0, "gamma": 1.0, "fisher_samples": 1000}, c)
    ewc._trainer = Trainer("fp32", accelerator_for("fp32"))
    items = [(np.random.RandomState(i).randint(0, 255, (2, 2, 3), dtype=np.uint8), i % 2) for i in range(10)]
    ewc.begin_task(0, [0, 1], items)
    ewc.end_task(0, [0, 1], items)
    assert ewc.penalty().item() == 0.0
    values = []
    for scale in (0.01, 0.1, 1.0):
        moved = copy.deepcopy(ewc)
        with torch.no_grad():
            moved.net.head.weight.add_(scale)
        values.append(moved.penalty().item())
    assert 0 < values[0] < values[1] < values[2]


def test_ewc_fisher_is_the_mean_of_per_sample_squared_gradients_summed_over_tasks():
    c = ctx()
    ewc = S.EWC(Feats(12), {"lambda": 1.0, "gamma": 1.0, "fisher_samples": 1000}, c)
    items = [(np.random.RandomState(i).randint(0, 255, (2, 2, 3), dtype=np.uint8), i % 2) for i in range(8)]
    ewc.seen[[0, 1]] = True
    fisher = ewc.estimate_fisher(items, 0)
    # by hand, one sample at a time (not the squared mean gradient of a batch)
    from toolkit.learn.loaders import ImageSet

    net = ewc.net.eval()
    manual = {n: torch.zeros_like(p) for n, p in net.named_parameters()}
    for i in range(len(items)):
        x, y = ImageSet(items, c.dc)[i]
        net.zero_grad()
        out = net(x.unsqueeze(0)).masked_fill(~ewc.seen, float("-inf"))
        F.cross_entropy(out, torch.tensor([y])).backward()
        for n, p in net.named_parameters():
            manual[n] += p.grad ** 2
    for n in manual:
        assert torch.allclose(fisher[n], manual[n] / len(items), rtol=1e-4, atol=1e-7), n
    net.zero_grad()
    xs = torch.stack([ImageSet(items, c.dc)[i][0] for i in range(len(items))])
    F.cross_entropy(net(xs).masked_fill(~ewc.seen, float("-inf")), torch.tensor([y for _, y in items])).backward()
    # the old estimate squared the batch-mean gradient: much smaller than the mean of squares
    assert (net.head.weight.grad ** 2).sum() < fisher["head.weight"].sum()
    # two tasks: summed (gamma 1), or decayed (online EWC)
    ewc.end_task(0, [0, 1], items)
    f1 = ewc.fisher("head.weight").clone()
    ewc.end_task(1, [0, 1], items)
    assert torch.allclose(ewc.fisher("head.weight"), f1 + ewc.estimate_fisher(items, 1)["head.weight"], rtol=1e-5)


def test_icarl_loss_is_the_original_binary_cross_entropy():
    c = ctx()
    icarl = S.ICaRL(Feats(12), {"memory": 20, "loss": "bce", "alpha": 1.0, "temperature": 2.0}, c)
    icarl.seen[[0, 1]] = True
    icarl.old_seen[[0]] = True  # class 0 was learnt before; class 1 is new
    with torch.no_grad():
        icarl.old.head.weight.normal_()
    x = torch.randn(5, 3, 2, 2)
    y = torch.tensor([1, 1, 0, 1, 0])
    out = icarl.net(x)
    targets = F.one_hot(y, 4).float()
    targets[:, 0] = torch.sigmoid(icarl.old(x)[:, 0])
    expected = F.binary_cross_entropy_with_logits(out[:, :2], targets[:, :2])
    assert icarl.loss(out, y, x).item() == pytest.approx(expected.item(), rel=1e-6)


def test_gdumb_memory_is_class_balanced():
    c = ctx(n_classes=4)
    g = S.GDumb(Feats(12), {"memory": 12}, c)
    # a stream where class 0 floods first
    stream = [(i, 0) for i in range(30)] + [(i, 1) for i in range(10)] + [(i, 2) for i in range(6)] + [(i, 3) for i in range(3)]
    for item in stream:
        g.offer(item)
    counts = np.bincount([y for _, y in g.memory], minlength=4)
    assert counts.sum() == 12 and counts.tolist() == [3, 3, 3, 3]


def test_der_reservoir_keeps_a_uniform_sample_of_the_stream():
    c = ctx()
    der = S.DER(Feats(12), {"memory": 10, "alpha": 0.3}, c)
    np.random.seed(0)
    seen = []
    for step in range(50):
        x = torch.full((4, 3, 2, 2), float(step))
        der.add(x, torch.zeros(4, dtype=torch.long), torch.zeros(4, 4))
        seen += [step] * 4
    assert int(der.num_seen) == 200
    stored = der.buf_x[:, 0, 0, 0]
    # every slot holds some example of the stream, and not only the first ones (reservoir, not FIFO)
    assert set(stored.long().tolist()) <= set(seen) and stored.max() > 25


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("cl")
    hp = {"ranpac": {"M": 256}, "fsa": {"M": 256}, "ewc": {"fisher_samples": 64}}
    return {name: run_cl(cfg(strategy=name, hp=hp.get(name, {})), root / name) for name in S.STRATEGIES}


def test_every_strategy_runs_with_the_standard_metrics(results):
    assert set(results) == {"naive", "replay", "lwf", "ewc", "icarl", "ncm", "ranpac", "fsa", "der", "derpp", "gdumb"}
    for name, r in results.items():
        T = len(r["counts"])
        assert T == 5 and r["protocol"] == "B2-Inc2" and r["final"]
        assert r["last_accuracy"] == pytest.approx(sum(c for c, _ in r["counts"][-1]) / sum(n for _, n in r["counts"][-1]))
        assert r["average_incremental_accuracy"] == pytest.approx(np.mean(r["incremental_accuracy"]))
        assert all(v is None for t, row in enumerate(r["accuracy_matrix"]) for v in row[t + 1:])


def test_each_task_is_learned_and_memories_fight_forgetting(results):
    naive = results["naive"]
    # the budget lets every task be learnt: the diagonal of the accuracy matrix is high
    assert min(naive["accuracy_matrix"][t][t] for t in range(5)) > 0.8, naive["accuracy_matrix"]
    assert naive["average_forgetting"] > 0.6  # and naive fine-tuning forgets it all the same
    for name in ("replay", "icarl", "derpp"):  # DER alone (alpha 0.3) does not hold old logits in 2 epochs here
        assert results[name]["last_accuracy"] > naive["last_accuracy"] + 0.2, name
        assert results[name]["average_forgetting"] < naive["average_forgetting"] - 0.2, name


def test_outputs_and_cli(tmp_path):
    out = tmp_path / "r"
    res = CliRunner().invoke(main, ["cl", "--strategy", "replay", "--hp", "memory=100", "--hp", "selection=herding",
                                    "--initial-classes", "4", "--increment", "2", "--out", str(out), "--epochs", "1",
                                    "--image-size", "16", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "B4-Inc2" in res.output and "replay" in res.output
    rows = read_jsonl(out / "results.jsonl")
    assert len(rows) == 4 and [r["step"] for r in rows] == [0, 1, 2, 3] and rows[-1]["final"]
    assert rows[-1]["hparams"] == {"memory": 100, "selection": "herding"}
    assert [len(t) for t in rows[-1]["tasks"]] == [4, 2, 2, 2]
    assert (out / "accuracy_matrix.png").stat().st_size > 1000
    listing = CliRunner().invoke(main, ["cl", "--list"])
    lines = listing.output.strip().splitlines()
    assert listing.exit_code == 0 and len(lines) == len(S.STRATEGIES)
    assert any(line.startswith("ewc: lambda: float = 100.0") for line in lines)


def test_resume_after_kill_is_exact(tmp_path):
    args = ["cl", "--strategy", "lwf", "--epochs", "3", "--image-size", "16", "--quiet"]
    ref = tmp_path / "ref"
    assert CliRunner().invoke(main, [*args, "--out", str(ref)]).exit_code == 0
    out = tmp_path / "killed"
    run_then_kill([sys.executable, "-m", "cli", *args, "--out", str(out)],
                  lambda: bool(list(out.glob("checkpoint/task-002/step-*"))))
    res = CliRunner().invoke(main, [*args, "--out", str(out)])
    assert res.exit_code == 0, res.output
    a, b = read_jsonl(ref / "results.jsonl")[-1], read_jsonl(out / "results.jsonl")[-1]
    assert a["counts"] == b["counts"]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == sorted(
        p.relative_to(ref).as_posix() for p in ref.rglob("*"))


def test_pretrained_and_imagenet_backbones(tmp_path):
    from toolkit.stages.pretrain.config import PretrainConfig
    from toolkit.stages.pretrain.stage import pretrain

    bb = tmp_path / "bb"
    pretrain(PretrainConfig(data="digits", epochs=1, image_size=16, backbone="resnet18", quiet=True), bb)
    r = run_cl(cfg(strategy="ncm", weights=str(bb)), tmp_path / "p")
    assert r["backbone"] == "resnet18" and r["weights"] == "pretrained:bb" and r["weights_path"] == str(bb)
    assert r["last_accuracy"] > 0.2
    with pytest.raises(AugurError, match="holds a resnet18 backbone, not resnet50"):
        run_cl(cfg(strategy="ncm", weights=str(bb), backbone="resnet50"), tmp_path / "q")
    r = run_cl(cfg(strategy="ncm", weights="imagenet", backbone="efficientnet_lite0", image_size=32), tmp_path / "i")
    assert r["weights"].startswith("imagenet") and r["weights_sha256"].startswith("579344248a93")


def test_cl_output_of_other_settings_is_refused(tmp_path):
    run_cl(cfg(strategy="ncm"), tmp_path / "run")
    with pytest.raises(AugurError, match="cl run with other settings.*strategy"):
        run_cl(cfg(strategy="naive"), tmp_path / "run")
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("not ours")
    with pytest.raises(AugurError, match="not empty and holds no cl run"):
        run_cl(cfg(strategy="ncm"), tmp_path / "theirs")
    assert [p.name for p in (tmp_path / "theirs").iterdir()] == ["notes.txt"]
