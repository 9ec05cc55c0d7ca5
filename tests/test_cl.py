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
from helpers import assert_same_files, killed_at
from toolkit.core.errors import AugurError
from toolkit.core.files import read_jsonl
from toolkit.learn.images import ImageStore
from toolkit.learn.loop import Trainer, accelerator_for
from toolkit.learn.transforms import DataConfig
from toolkit.stages.cl import strategies as S
from toolkit.stages.cl.config import CLConfig
from toolkit.stages.cl.hparams import STRATEGY_HPARAMS
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


def context(items, n_classes: int = 4, batch_size: int = 8):
    """A Context over a real image store of 2x2 images (identity normalisation); returns it and the
    (row, label) items the strategies take."""
    store = ImageStore(items, DataConfig(2, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)), "cpu")
    c = S.Context(store, 0, n_classes, 2, 1e-2, 0.0, batch_size)
    return c, [(int(r), int(y)) for r, y in enumerate(store.labels_np)]


def pixels(n: int, n_classes: int = 2, seed: int = 0):
    return [(np.random.RandomState(seed + i).randint(0, 255, (2, 2, 3), dtype=np.uint8), i % n_classes)
            for i in range(n)]


def strategy(cls, hp, items, n_classes=4, batch_size=8):
    c, rows = context(items, n_classes, batch_size)
    # Feats stands for a convolutional backbone (no ViT blocks): hyper-parameters resolved as for test_resnet
    resolved = cls.resolve_hp({**{k: v.default for k, v in STRATEGY_HPARAMS[cls.name].items()}, **hp}, hp,
                              "test_resnet", False)
    st = cls(Feats(12), resolved, c)
    st._trainer = Trainer("fp32", accelerator_for("fp32"))
    return st, rows


def xs(st, rows):
    return torch.cat([x for x, _ in st.ctx.batches(rows, 256)])


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


def per_sample(st, rows, weighted: bool):
    """The Fisher by hand, one sample at a time: squared gradients of -log p(y|x), weighted by p(y|x) or not."""
    net = st.net.eval()
    total = {n: torch.zeros_like(p) for n, p in net.named_parameters()}
    for r, y in rows:
        x = xs(st, [(r, y)])
        net.zero_grad()
        out = net(x).masked_fill(~st.seen, float("-inf"))
        nll = F.cross_entropy(out, torch.tensor([y]))
        nll.backward()
        w = float(torch.exp(-nll.detach())) if weighted else 1.0
        for n, p in net.named_parameters():
            total[n] += w * p.grad ** 2
    return total


def test_ewc_fisher_is_mammoths_by_default_and_the_empirical_one_on_request():
    """Mammoth's ewc_on: sum over the task's samples of p(y|x) * grad^2, over len(train_loader) * batch_size,
    penalty lambda * sum F (theta - theta*)^2; fisher=empirical: the mean of grad^2, penalty lambda / 2."""
    items = pixels(10)
    ewc, rows = strategy(S.EWC, {}, items, batch_size=4)
    assert (ewc.hp["fisher"], ewc.hp["lambda"], ewc.hp["fisher_samples"]) == ("mammoth", 10.0, 0)
    ewc.seen[[0, 1]] = True
    fisher = ewc.estimate_fisher(rows, 0)
    by_hand = per_sample(ewc, rows, weighted=True)
    for n in by_hand:  # 10 samples in batches of 4: len(loader) * batch_size = 3 * 4 = 12
        assert torch.allclose(fisher[n], by_hand[n] / 12, rtol=1e-4, atol=1e-8), n
    emp, rows = strategy(S.EWC, {"fisher": "empirical"}, items, batch_size=4)
    emp.seen[[0, 1]] = True
    plain = per_sample(emp, rows, weighted=False)
    empirical = emp.estimate_fisher(rows, 0)
    for n in plain:
        assert torch.allclose(empirical[n], plain[n] / 10, rtol=1e-4, atol=1e-8), n
    assert not torch.allclose(empirical["head.weight"], fisher["head.weight"])  # the variants differ
    # the penalty: zero at the anchor, lambda (mammoth) or lambda / 2 (empirical) times sum F (theta - theta*)^2
    for st, weight in ((ewc, 10.0), (emp, 5.0)):
        st.begin_task(0, [0, 1], rows)
        st.end_task(0, [0, 1], rows)
        st.begin_task(1, [2, 3], rows)
        assert st.penalty().item() == 0.0
        with torch.no_grad():
            st.net.head.weight.add_(0.1)
        out = st.net(xs(st, rows))
        y = torch.tensor([yy for _, yy in rows])
        ce = F.cross_entropy(st.masked(out), y)
        by_hand = sum((st.fisher(n) * (p - st.anchor(n)) ** 2).sum() for n, p in st.net.named_parameters())
        assert st.loss(out, y, None).item() == pytest.approx((ce + weight * by_hand).item(), rel=1e-5)
        assert by_hand.item() > 0
    # two tasks: summed (gamma 1), or decayed (online EWC)
    for gamma in (1.0, 0.5):
        st, rows = strategy(S.EWC, {"gamma": gamma}, items, batch_size=4)
        st.begin_task(0, [0, 1], rows)
        st.end_task(0, [0, 1], rows)
        f1 = st.fisher("head.weight").clone()
        st.begin_task(1, [0, 1], rows)
        st.end_task(1, [0, 1], rows)
        assert torch.allclose(st.fisher("head.weight"), gamma * f1 + st.estimate_fisher(rows, 1)["head.weight"],
                              rtol=1e-5)


def test_lwf_is_pycils_new_class_ce_plus_three_times_its_kd():
    """PyCIL models/lwf.py: CE(logits[:, new], y - known) + 3 * _KD_loss(logits[:, old], old logits, T=2),
    _KD_loss = -sum(softmax(old / T) * log_softmax(new / T)) / N (no T^2). loss=kl: CE over every seen class +
    alpha * KL * T^2."""
    items = pixels(8, 4)
    lwf, rows = strategy(S.LwF, {}, items)
    assert (lwf.hp["loss"], lwf.hp["alpha"], lwf.hp["temperature"]) == ("pycil", 3.0, 2.0)
    lwf.begin_task(0, [0, 2], rows)
    lwf.end_task(0, [0, 2], rows)
    with torch.no_grad():
        lwf.old.head.weight.normal_()  # an old model unlike the new one
    lwf.begin_task(1, [1, 3], rows)
    x = torch.randn(5, 3, 2, 2)
    y = torch.tensor([1, 3, 3, 1, 1])
    out = lwf.net(x)
    old_out = lwf.old(x)
    # by hand: new classes 1 and 3 in order, targets their positions; old classes 0 and 2
    ce = F.cross_entropy(out[:, [1, 3]], torch.tensor([0, 1, 1, 0, 0]))
    soft = F.softmax(old_out[:, [0, 2]] / 2, 1)
    kd = -(soft * F.log_softmax(out[:, [0, 2]] / 2, 1)).sum() / 5
    assert lwf.loss(out, y, x).item() == pytest.approx((ce + 3 * kd).item(), rel=1e-5)
    kl_variant, _ = strategy(S.LwF, {"loss": "kl", "alpha": 1.0}, items)
    kl_variant.load_state_dict(lwf.state_dict())
    kl_variant.begin_task(1, [1, 3], rows)
    kl = F.kl_div(F.log_softmax(out[:, [0, 2]] / 2, 1), soft, reduction="batchmean") * 4
    ce_seen = F.cross_entropy(out.masked_fill(~lwf.seen, float("-inf")), y)
    assert kl_variant.loss(out, y, x).item() == pytest.approx((ce_seen + kl).item(), rel=1e-5)
    assert kl_variant.loss(out, y, x).item() != pytest.approx(lwf.loss(out, y, x).item(), rel=1e-3)


def test_icarl_loss_is_the_original_binary_cross_entropy_or_pycils():
    items = pixels(8, 4)
    icarl, rows = strategy(S.ICaRL, {"memory": 20}, items)
    icarl.begin_task(0, [0], [it for it in rows if it[1] == 0])
    icarl.end_task(0, [0], [it for it in rows if it[1] == 0])
    icarl.begin_task(1, [1], [it for it in rows if it[1] == 1])  # class 0 was learnt before; class 1 is new
    with torch.no_grad():
        icarl.old.head.weight.normal_()
    x = torch.randn(5, 3, 2, 2)
    y = torch.tensor([1, 1, 0, 1, 0])
    out = icarl.net(x)
    targets = F.one_hot(y, 4).float()
    targets[:, 0] = torch.sigmoid(icarl.old(x)[:, 0])
    expected = F.binary_cross_entropy_with_logits(out[:, :2], targets[:, :2])
    assert icarl.loss(out, y, x).item() == pytest.approx(expected.item(), rel=1e-6)
    # loss=ce: PyCIL's icarl.py, CE over the seen classes + _KD_loss(T=2) unweighted, no T^2
    icarl.hp["loss"] = "ce"
    ce = F.cross_entropy(out[:, :2], y)
    kd = -(F.softmax(icarl.old(x)[:, :1] / 2, 1) * F.log_softmax(out[:, :1] / 2, 1)).sum() / 5
    assert icarl.loss(out, y, x).item() == pytest.approx((ce + kd).item(), rel=1e-5)
    icarl.hp["loss"] = "kl"
    kl = F.kl_div(F.log_softmax(out[:, :1] / 2, 1), F.softmax(icarl.old(x)[:, :1] / 2, 1), reduction="batchmean") * 4
    assert icarl.loss(out, y, x).item() == pytest.approx((ce + kl).item(), rel=1e-5)


def test_icarl_classifies_by_the_nearest_mean_of_exemplars_chosen_by_herding():
    items = pixels(30, 3, seed=7)
    icarl, rows = strategy(S.ICaRL, {"memory": 9}, items, n_classes=3)
    icarl.begin_task(0, [0, 1, 2], rows)
    icarl.end_task(0, [0, 1, 2], rows)
    # herding by hand: greedily the sample whose addition keeps the running mean closest to the class mean
    f = F.normalize(icarl.features(rows)[0], dim=1)
    for c in range(3):
        idx = [i for i, (_, y) in enumerate(rows) if y == c]
        mu, chosen, acc = f[idx].mean(0), [], torch.zeros(12)
        for k in range(3):
            scores = [((mu - (acc + f[i]) / (k + 1)) ** 2).sum().item() if i not in chosen else float("inf") for i in idx]
            chosen.append(idx[int(np.argmin(scores))])
            acc += f[chosen[-1]]
        assert [r for r, y in icarl.memory if y == c] == [rows[i][0] for i in chosen]
    # nearest mean of exemplars: normalised mean of the exemplars' normalised features, cosine to it
    means = torch.stack([F.normalize(f[[r for r, y in icarl.memory if y == c]].mean(0), dim=0) for c in range(3)])
    queries = xs(icarl, rows)
    by_hand = (F.normalize(queries.flatten(1), dim=1) @ means.T).argmax(1)
    assert torch.equal(icarl.predict(queries).argmax(1), by_hand)


def test_replay_memory_keeps_an_equal_quota_per_seen_class():
    items = pixels(60, 6, seed=3)
    rep, rows = strategy(S.Replay, {"memory": 12}, items, n_classes=6)
    for t, classes in enumerate(([0, 1], [2, 3], [4, 5])):
        task = [it for it in rows if it[1] in classes]
        rep.begin_task(t, classes, task)
        rep.end_task(t, classes, task)
        per_class = np.bincount([y for _, y in rep.memory], minlength=6)
        seen = 2 * (t + 1)
        assert per_class[:seen].tolist() == [12 // seen] * seen and per_class[seen:].sum() == 0
        assert set(rep.training_items(task)) == set(task) | set(rep.memory)


def test_gdumb_memory_is_class_balanced_and_each_task_restarts_from_the_initial_weights():
    c, _ = context(pixels(4))
    g = S.GDumb(Feats(12), {"memory": 12}, c)
    # a stream where class 0 floods first
    stream = [(i, 0) for i in range(30)] + [(i, 1) for i in range(10)] + [(i, 2) for i in range(6)] + [(i, 3) for i in range(3)]
    for item in stream:
        g.offer(item)
    counts = np.bincount([y for _, y in g.memory], minlength=4)
    assert counts.sum() == 12 and counts.tolist() == [3, 3, 3, 3]
    g2, rows = strategy(S.GDumb, {"memory": 8}, pixels(16, 4), n_classes=4)
    initial = copy.deepcopy(g2.net.state_dict())
    g2.begin_task(0, [0, 1], rows[:8])
    with torch.no_grad():
        g2.net.head.weight.add_(1.0)  # "training" on task 0
    g2.begin_task(1, [2, 3], rows[8:])
    assert all(torch.equal(v, initial[k]) for k, v in g2.net.state_dict().items())


def test_fsa_adapts_the_backbone_on_the_first_task_only():
    items = pixels(16, 4)
    fsa, rows = strategy(S.FSA, {"M": 16}, items)
    assert fsa.trains_on(0) and not fsa.trains_on(1) and not S.RanPAC.trains
    fsa.begin_task(0, [0, 1], rows)
    assert fsa.optimizer is not None and all(p.requires_grad for p in fsa.net.backbone.parameters())
    fsa.end_task(0, [0, 1], rows)
    frozen = copy.deepcopy(fsa.net.backbone.state_dict())
    assert not any(p.requires_grad for p in fsa.net.parameters())
    fsa.begin_task(1, [2, 3], rows)
    assert fsa.optimizer is None or not fsa.trains_on(1)
    fsa.end_task(1, [2, 3], rows)
    assert all(torch.equal(v, frozen[k]) for k, v in fsa.net.backbone.state_dict().items())
    assert len(fsa.ridges) == 2  # the head learnt both tasks


def test_ranpac_adapters_are_adaptformer_parallel_branches_in_a_frozen_vit():
    """RanPAC's Block.forward with its Adapter (petl/vision_transformer_adapter.py): x + attn(norm1 x), then
    x + mlp(norm2 x) + 0.1 * up(relu(down(x))) of the stream before norm2; the "lora" init changes nothing."""
    import timm

    from toolkit.learn.adapters import add_adapters

    torch.manual_seed(0)
    plain = timm.create_model("test_vit", num_classes=0, img_size=32).eval()
    vit = add_adapters(copy.deepcopy(plain), 8).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(vit(x), plain(x))  # up_proj and the biases start at zero
    trainable = {n for n, p in vit.named_parameters() if p.requires_grad}
    assert trainable and all(".mlp.adapter." in n for n in trainable)
    assert len(trainable) == 4 * len(vit.blocks)  # down/up weight and bias per block, nothing else
    a = vit.blocks[0].mlp.adapter
    assert a.down_proj.weight.abs().sum() > 0 and a.scale == 0.1 and a.dropout == 0.1
    for b in vit.blocks:
        with torch.no_grad():
            b.mlp.adapter.up_proj.weight.normal_()
            b.mlp.adapter.up_proj.bias.normal_()
    blk, ref = vit.blocks[0], plain.blocks[0]
    tokens = torch.randn(2, 5, vit.embed_dim)
    with torch.no_grad():
        h = tokens + ref.attn(ref.norm1(tokens))
        ad = blk.mlp.adapter
        expected = h + ref.mlp.fc2(ref.mlp.act(ref.mlp.fc1(ref.norm2(h)))) + \
            0.1 * ad.up_proj(torch.relu(ad.down_proj(h)))
        assert torch.allclose(blk(tokens), expected, atol=1e-6)
    with pytest.raises(AugurError, match="vision transformer"):
        add_adapters(timm.create_model("test_resnet", num_classes=0))


def test_ranpac_ssf_scales_and_shifts_after_each_op_as_its_forward_does():
    """RanPAC's petl/vision_transformer_ssf.py: ssf_ada (x * scale + shift, per channel) after the patch
    projection, each block's norm1, qkv, attention projection, norm2, fc1 and fc2, and the final norm; only
    those scales and shifts train. The block is checked against RanPAC's Block/Attention/Mlp forward written
    out here from the plain block's weights."""
    import timm

    from toolkit.learn.adapters import ScaleShift, add_ssf

    torch.manual_seed(0)
    plain = timm.create_model("test_vit", num_classes=0, img_size=32).eval()
    vit = add_ssf(copy.deepcopy(plain)).eval()
    trainable = [n for n, p in vit.named_parameters() if p.requires_grad]
    assert len(trainable) == 2 * (1 + 6 * len(vit.blocks) + 1) and all(n.endswith((".scale", ".shift"))
                                                                        for n in trainable)
    ssf = [m for m in vit.modules() if isinstance(m, ScaleShift)]
    with torch.no_grad():  # N(1, 0.02) and N(0, 0.02)
        assert abs(float(torch.cat([m.scale for m in ssf]).mean()) - 1) < 0.01
        assert 0.005 < float(torch.cat([m.shift for m in ssf]).std()) < 0.05
    s = lambda seq: seq[1]  # noqa: E731 - the ScaleShift after the op

    def ranpac_block(blk, ref, x):
        n1 = s(blk.norm1)(ref.norm1(x))
        B, N, C = n1.shape
        H = ref.attn.num_heads
        q, k, v = s(blk.attn.qkv)(ref.attn.qkv(n1)).reshape(B, N, 3, H, C // H).permute(2, 0, 3, 1, 4).unbind(0)
        attn = ((q @ k.transpose(-2, -1)) * (C // H) ** -0.5).softmax(dim=-1)
        x = x + s(blk.attn.proj)(ref.attn.proj((attn @ v).transpose(1, 2).reshape(B, N, C)))
        n2 = s(blk.norm2)(ref.norm2(x))
        return x + s(blk.mlp.fc2)(ref.mlp.fc2(ref.mlp.act(s(blk.mlp.fc1)(ref.mlp.fc1(n2)))))

    tokens = torch.randn(2, 5, vit.embed_dim)
    img = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for blk, ref in zip(vit.blocks, plain.blocks):
            assert torch.allclose(blk(tokens), ranpac_block(blk, ref, tokens), atol=1e-5)
        sp = s(vit.patch_embed.proj)
        expected = (plain.patch_embed.proj(img) * sp.scale.view(1, -1, 1, 1) + sp.shift.view(1, -1, 1, 1))
        assert torch.allclose(vit.patch_embed(img), expected.permute(0, 2, 3, 1), atol=1e-6)  # timm's NHWC tokens
        assert torch.allclose(vit.norm(tokens), plain.norm(tokens) * s(vit.norm).scale + s(vit.norm).shift)
    with pytest.raises(AugurError, match="vision transformer"):
        add_ssf(timm.create_model("test_resnet", num_classes=0))


def test_ranpac_vpt_deep_prompts_each_block_and_drops_them_after():
    """RanPAC's petl/vpt.py, VPT_type "Deep" with 5 tokens: each block sees its own prompt tokens (zeros at the
    start) after the class and patch tokens, and they are removed after it; only the prompts train."""
    import timm

    from toolkit.learn.adapters import add_vpt

    torch.manual_seed(0)
    plain = timm.create_model("test_vit", num_classes=0, img_size=32).eval()
    vit = add_vpt(copy.deepcopy(plain), 5).eval()
    trainable = {n: p for n, p in vit.named_parameters() if p.requires_grad}
    assert len(trainable) == len(vit.blocks) and all(p.shape == (1, 5, vit.embed_dim) and not p.any()
                                                     for p in trainable.values())
    for blk in vit.blocks:
        with torch.no_grad():
            blk.prompt.normal_()
    img = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        x = plain._pos_embed(plain.patch_embed(img))
        for blk, ref in zip(vit.blocks, plain.blocks):
            n = x.shape[1]
            x = ref(torch.cat((x, blk.prompt.expand(2, -1, -1)), dim=1))[:, :n]
        assert torch.allclose(vit(img), plain.norm(x)[:, 0], atol=1e-5)  # the class token, as VPT_ViT.forward
        assert not torch.allclose(vit(img), plain(img), atol=1e-3)


def vit_strategy(hp, n=16, n_classes=4):
    """An FSA on timm's test ViT over a real image store of 16 x 16 images."""
    from toolkit.learn import backbones

    items = [(np.random.RandomState(i).randint(0, 255, (16, 16, 3), dtype=np.uint8), i % n_classes)
             for i in range(n)]
    store = ImageStore(items, DataConfig(16, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), "cpu")
    c = S.Context(store, 0, n_classes, 16, 1e-3, 0.0, 8)
    defaults = {k: v.default for k, v in STRATEGY_HPARAMS["fsa"].items()}
    resolved = S.FSA.resolve_hp({**defaults, **hp}, hp, "test_vit", False)
    torch.manual_seed(0)
    st = S.FSA(backbones.create("test_vit", 16), resolved, c)
    st._trainer = Trainer("fp32", accelerator_for("fp32"))
    return st, [(int(r), int(y)) for r, y in enumerate(store.labels_np)]


def test_fsa_first_session_is_ranpacs_on_a_vit():
    """auto on a ViT: adapters, SGD (momentum 0.9, lr 0.01, weight decay 5e-4) annealed per epoch exactly as
    torch's CosineAnnealingLR(T_max=epochs, eta_min=0), a cosine head with a learnt scale; only the adapters
    and the head move, and after the first task nothing does."""
    fsa, rows = vit_strategy({"M": 16})
    assert (fsa.hp["petl"], fsa.hp["optimizer"], fsa.hp["adapter_dim"]) == ("adapter", "sgd", 64)
    assert isinstance(fsa.net.head, S.CosineLinear)
    base = {n: p.detach().clone() for n, p in fsa.net.backbone.named_parameters() if ".adapter." not in n}
    fsa.begin_task(0, [0, 1, 2, 3], rows)
    opt = fsa.optimizer
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.9
    assert opt.defaults["weight_decay"] == 5e-4
    epochs, spe = 3, 2
    fsa.begin_training(epochs, spe)
    p = nn.Parameter(torch.zeros(1))
    ref_opt = torch.optim.SGD([p], lr=0.01)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(ref_opt, T_max=epochs, eta_min=0.0)
    expected = []
    for _ in range(epochs):
        expected += [ref_opt.param_groups[0]["lr"]] * spe
        sched.step()
    head0, sigma0 = fsa.net.head.weight.detach().clone(), float(fsa.net.head.sigma.detach())
    x = xs(fsa, rows)
    y = torch.tensor([lab for _, lab in rows])
    fsa.train()
    seen = []
    for step in range(epochs * spe):
        fsa.current_step = step
        fsa.update([(x, y)])
        seen.append(opt.param_groups[0]["lr"])
    assert seen == pytest.approx(expected, rel=1e-12, abs=1e-15) and seen[0] == 0.01 and seen[-1] < 0.01
    after = dict(fsa.net.backbone.named_parameters())
    assert all(torch.equal(after[n], v) for n, v in base.items())  # the ViT's own weights did not move
    assert any(after[n].abs().sum() > 0 for n in after if n.endswith("adapter.up_proj.weight"))
    assert not torch.equal(fsa.net.head.weight, head0) and float(fsa.net.head.sigma.detach()) != sigma0
    fsa.end_task(0, [0, 1, 2, 3], rows)
    assert not any(q.requires_grad for q in fsa.net.parameters())
    assert fsa.optimizer_settings() == {"optimizer": "sgd (momentum 0.9, cosine annealing to 0)", "lr": 0.01,
                                        "weight_decay": 5e-4}


@pytest.mark.parametrize("petl,marker", [("ssf", (".scale", ".shift")), ("vpt", (".prompt",))])
def test_fsa_ssf_and_vpt_first_sessions_train_only_their_modules(petl, marker):
    """RanPAC's SSF and VPT rows (args/imagenetr_publish.csv 5-7, cars_publish.csv 5-7): the same SGD first
    session as the adapters; only their parameters and the head move."""
    fsa, rows = vit_strategy({"M": 16, "petl": petl})
    assert (fsa.hp["petl"], fsa.hp["optimizer"]) == (petl, "sgd") and isinstance(fsa.net.head, S.CosineLinear)
    before = {n: p.detach().clone() for n, p in fsa.net.backbone.named_parameters()}
    fsa.begin_task(0, [0, 1, 2, 3], rows)
    fsa.begin_training(1, 2)
    x, y = xs(fsa, rows), torch.tensor([lab for _, lab in rows])
    fsa.train()
    for step in range(2):
        fsa.current_step = step
        fsa.update([(x, y)])
    moved = {n for n, p in fsa.net.backbone.named_parameters() if not torch.equal(p, before[n])}
    assert moved and all(n.endswith(marker) for n in moved)


def test_fsa_choices_resolve_to_what_is_applied():
    defaults = {k: v.default for k, v in STRATEGY_HPARAMS["fsa"].items()}

    def resolve(arch, lora=False, **given):
        return S.FSA.resolve_hp({**defaults, **given}, given, arch, lora)

    cnn = resolve("resnet18")  # the whole backbone, the run's AdamW and a linear head
    assert (cnn["petl"], cnn["optimizer"], cnn["adapter_dim"], cnn["sgd_lr"]) == ("none", "adamw", None, None)
    lora = resolve("vit_b16", lora=True)  # LoRA freezes the ViT's weights: RanPAC's SGD
    assert (lora["petl"], lora["optimizer"], lora["adapter_dim"], lora["sgd_lr"]) == ("none", "sgd", None, 0.01)
    assert resolve("vit_b16", optimizer="adamw")["sgd_lr"] is None
    assert resolve("vit_b16", petl="none")["optimizer"] == "adamw"
    assert resolve("vit_b16", head="ncm", M=64)["M"] is None  # the NCM head projects nothing
    ssf, vpt = resolve("vit_b16", petl="ssf"), resolve("vit_b16", petl="vpt")
    assert (ssf["optimizer"], ssf["adapter_dim"], ssf["vpt_tokens"]) == ("sgd", None, None)
    assert (vpt["optimizer"], vpt["adapter_dim"], vpt["vpt_tokens"]) == ("sgd", None, 5)
    for arch, lora, given, match in (("resnet18", False, {"petl": "adapter"}, "not one"),
                                     ("resnet18", False, {"petl": "ssf"}, "not one"),
                                     ("vit_b16", True, {"petl": "vpt"}, "choose one"),
                                     ("vit_b16", False, {"petl": "ssf", "vpt_tokens": 8}, "vpt_tokens does not"),
                                     ("vit_b16", True, {"petl": "adapter"}, "choose one"),
                                     ("resnet18", False, {"sgd_lr": 0.1}, "sgd_lr does not apply"),
                                     ("vit_b16", False, {"petl": "none", "adapter_dim": 8}, "adapter_dim does not")):
        with pytest.raises(AugurError, match=match):
            resolve(arch, lora, **given)


def test_der_adds_the_logit_mse_on_the_buffer_and_derpp_the_label_ce():
    items = pixels(8, 4)
    for cls, hp in ((S.DER, {"alpha": 0.3}), (S.DERpp, {"alpha": 0.1, "beta": 0.5})):
        der, rows = strategy(cls, {"memory": 6, **hp}, items)
        der.begin_task(0, [0, 1, 2, 3], rows)
        bx = torch.randn(6, 3, 2, 2)
        der.add(bx, torch.tensor([0, 1, 2, 3, 0, 1]), torch.randn(6, 4))
        assert der.seen_examples == 6
        x, y = torch.randn(4, 3, 2, 2), torch.tensor([0, 1, 2, 3])
        net = copy.deepcopy(der.net)
        np.random.seed(5)
        choice = np.random.choice(6, size=4, replace=False)
        choice2 = np.random.choice(6, size=4, replace=False)
        out = net(x)
        expected = F.cross_entropy(out, y) + hp["alpha"] * F.mse_loss(net(der.buf_x[choice]), der.buf_logits[choice])
        if cls is S.DERpp:
            expected = expected + hp["beta"] * F.cross_entropy(net(der.buf_x[choice2]), der.buf_y[choice2])
        np.random.seed(5)
        assert der.update([(x, y)])["loss"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_der_reservoir_keeps_a_uniform_sample_of_the_stream():
    der, _ = strategy(S.DER, {"memory": 10, "alpha": 0.3}, pixels(4))
    np.random.seed(0)
    seen = []
    for step in range(50):
        x = torch.full((4, 3, 2, 2), float(step))
        der.add(x, torch.zeros(4, dtype=torch.long), torch.zeros(4, 4))
        seen += [step] * 4
    assert int(der.num_seen) == 200 == der.seen_examples
    stored = der.buf_x[:, 0, 0, 0]
    # every slot holds some example of the stream, and not only the first ones (reservoir, not FIFO)
    assert set(stored.long().tolist()) <= set(seen) and stored.max() > 25


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("cl")
    hp = {"ranpac": {"M": 256}, "fsa": {"M": 256}, "ewc": {"fisher_samples": 16}}  # its Fisher: test_ewc_fisher_*
    return {name: run_cl(cfg(strategy=name, hp=hp.get(name, {})), root / name).data for name in S.STRATEGIES}


def test_every_strategy_runs_with_the_standard_metrics(results):
    assert set(results) == {"naive", "replay", "lwf", "ewc", "icarl", "ncm", "ranpac", "fsa", "der", "derpp", "gdumb"}
    for name, r in results.items():
        T = len(r["counts"])
        assert T == 5 and r["protocol"] == "B2-Inc2" and r["final"]
        assert r["last_accuracy"] == pytest.approx(sum(c for c, _ in r["counts"][-1]) / sum(n for _, n in r["counts"][-1]))
        assert r["average_incremental_accuracy"] == pytest.approx(np.mean(r["incremental_accuracy"]))
        assert all(v is None for t, row in enumerate(r["accuracy_matrix"]) for v in row[t + 1:])
        # the row says what was applied: which tasks trained, and no epochs or optimiser where none did
        trained = {"ncm": [], "ranpac": [], "fsa": [0]}.get(name, [0, 1, 2, 3, 4])
        assert r["trained_tasks"] == trained, name
        assert (r["epochs"], r["lr"], r["weight_decay"]) == ((2, 1e-3, 0.0) if trained else (0, None, None)), name


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
    # a finished run re-run is done: nothing retrained or rewritten (wall_seconds would differ otherwise)
    before = {p.name: p.read_bytes() for p in (out / "results.jsonl", out / "accuracy_matrix.png")}
    again = CliRunner().invoke(main, ["cl", "--strategy", "replay", "--hp", "memory=100", "--hp",
                                      "selection=herding", "--initial-classes", "4", "--increment", "2", "--out",
                                      str(out), "--epochs", "1", "--image-size", "16", "--quiet"])
    assert again.exit_code == 0 and again.output == res.output, again.output
    assert {p.name: p.read_bytes() for p in (out / "results.jsonl", out / "accuracy_matrix.png")} == before
    listing = CliRunner().invoke(main, ["cl", "--list"])
    lines = listing.output.strip().splitlines()
    assert listing.exit_code == 0 and len(lines) == len(S.STRATEGIES)
    assert any(line.startswith("ewc: lambda: float = 10.0") and "fisher: str = 'mammoth'" in line for line in lines)


def test_resume_after_kill_is_exact(tmp_path):
    # 3 epochs a task, a checkpoint after each but the last (the task's own save follows it): the 5th is task 3's
    # first, so the kill lands inside task 3
    killed_inside_task(tmp_path, ["cl", "--strategy", "lwf", "--epochs", "3", "--image-size", "16", "--quiet"],
                       "loop.after_checkpoint:5", 2)


def killed_inside_task(tmp_path, args: list[str], point: str, task: int):
    """An uninterrupted run, and one killed at `point` inside task `task` then run again: every file the same,
    byte for byte (timing fields aside: results, accuracy matrix, the final task's weights). The reference."""
    ref = tmp_path / "ref"
    res = CliRunner().invoke(main, [*args, "--out", str(ref)])
    assert res.exit_code == 0, res.output
    out = tmp_path / "killed"
    killed_at([sys.executable, "-m", "cli", *args, "--out", str(out)], point)
    assert list(out.glob(f"checkpoint/task-{task:03d}/step-*")) and not list(out.glob(f"tasks/task-{task:03d}"))
    res = CliRunner().invoke(main, [*args, "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert_same_files(ref, out)
    return ref


def test_fsa_ranpac_first_session_resumes_exactly_and_is_recorded(tmp_path):
    args = ["cl", "--strategy", "fsa", "--backbone", "test_vit", "--image-size", "16", "--epochs", "2",
            "--initial-classes", "4", "--increment", "3", "--hp", "M=32", "--quiet"]
    # task 0 checkpoints after its first epoch: killed there, the momentum and the annealed rate resume as they were
    ref = killed_inside_task(tmp_path, args, "loop.after_checkpoint:1", 0)
    row = read_jsonl(ref / "results.jsonl")[-1]
    assert row["hparams"] == {"head": "ranpac", "M": 32, "petl": "adapter", "adapter_dim": 64, "vpt_tokens": None,
                              "optimizer": "sgd", "sgd_lr": 0.01, "sgd_weight_decay": 5e-4}
    assert (row["optimizer"], row["lr"], row["weight_decay"], row["lora"]) == (
        "sgd (momentum 0.9, cosine annealing to 0)", 0.01, 5e-4, False)


def test_lora_trains_adapters_on_a_frozen_backbone_and_is_refused_where_nothing_trains(tmp_path):
    from safetensors.torch import load_file

    from toolkit.learn import backbones

    out = tmp_path / "lora"
    res = CliRunner().invoke(main, ["cl", "--strategy", "naive", "--lora", "--lora-rank", "4", "--backbone",
                                    "test_resnet", "--image-size", "16", "--epochs", "1", "--initial-classes", "4",
                                    "--increment", "3", "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    row = read_jsonl(out / "results.jsonl")[-1]
    assert (row["lora"], row["lora_rank"], row["optimizer"], row["lr"]) == (True, 4, "adamw", 1e-3)
    state = load_file(str(next(out.glob("tasks/task-*")) / "model.safetensors"))
    assert any("lora_A" in k for k in state)
    torch.manual_seed(0)  # the run's seed: the backbone it built before wrapping it
    init = backbones.create("test_resnet", 16).state_dict()
    prefix = "net.backbone.base_model.model."
    frozen = {k[len(prefix):].replace(".base_layer", ""): v for k, v in state.items()
              if k.startswith(prefix) and ".base_layer.weight" in k}
    assert frozen and all(torch.equal(v, init[k]) for k, v in frozen.items())  # only the adapters (and head) moved
    res = CliRunner().invoke(main, ["cl", "--strategy", "ncm", "--lora", "--out", str(tmp_path / "ncm")])
    assert res.exit_code == 2 and "trains no weight" in res.output and "Traceback" not in res.output


def test_pretrained_and_imagenet_backbones(tmp_path):
    from toolkit.stages.pretrain.config import PretrainConfig
    from toolkit.stages.pretrain.stage import pretrain

    bb = tmp_path / "bb"
    pretrain(PretrainConfig(data="digits", epochs=1, image_size=16, backbone="resnet18", quiet=True), bb)
    r = run_cl(cfg(strategy="ncm", weights=str(bb)), tmp_path / "p").data
    assert r["backbone"] == "resnet18" and r["weights"] == "pretrained:bb" and r["weights_path"] == str(bb)
    assert r["last_accuracy"] > 0.2
    with pytest.raises(AugurError, match="holds a resnet18 backbone, not resnet50"):
        run_cl(cfg(strategy="ncm", weights=str(bb), backbone="resnet50"), tmp_path / "q")
    r = run_cl(cfg(strategy="ncm", weights="imagenet", backbone="efficientnet_lite0", image_size=32),
               tmp_path / "i").data
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


def test_training_settings_do_not_decide_a_strategy_that_trains_nothing(tmp_path):
    """ncm trains no task: --epochs and --lr change nothing, so they find the same finished folder (recorded as
    epochs 0, lr null), and a folder written when the identity held the values asked for still resumes."""
    from toolkit.core.files import read_json, write_json

    first = run_cl(cfg(strategy="ncm", epochs=2, lr=1e-3), tmp_path / "run").data
    again = run_cl(cfg(strategy="ncm", epochs=7, lr=0.5, weight_decay=0.1), tmp_path / "run").data
    assert again == first and (first["epochs"], first["lr"]) == (0, None)
    record = read_json(tmp_path / "run" / "cl.json")
    assert {k: record["identity"][k] for k in ("epochs", "lr", "weight_decay")} == {"epochs": 0, "lr": None,
                                                                                    "weight_decay": None}
    # an older folder's identity: the values asked for
    write_json(tmp_path / "run" / "cl.json", {**record, "identity": {**record["identity"], "epochs": 10,
                                                                      "lr": 1e-3, "weight_decay": 0.0}})
    assert run_cl(cfg(strategy="ncm", epochs=3), tmp_path / "run").data == first
    with pytest.raises(AugurError, match="cl run with other settings"):  # a setting that does decide: refused
        run_cl(cfg(strategy="ncm", image_size=24), tmp_path / "run")
