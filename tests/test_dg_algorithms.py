"""Each DG algorithm against the property that defines it (DomainBed's formulas), on a small real network."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from toolkit.learn.loop import Trainer, accelerator_for
from toolkit.stages.dg import algorithms as A
from toolkit.stages.dg.hparams import ALGORITHM_HPARAMS, default_hparams, hparams_for, random_hparams, seed_hash


class SmallNet(nn.Module):
    """A real (tiny) convolutional featurizer with BatchNorm, as timm backbones are: it has num_features."""

    num_features = 8

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x))).mean((2, 3))


def make(name: str, num_domains: int = 3, **hp):
    torch.manual_seed(0)
    hparams = {**default_hparams(name, "small"), **hp}
    alg = A.ALGORITHMS.get(name)(SmallNet(), 4, num_domains, hparams)
    alg._trainer = Trainer("fp32", accelerator_for("fp32"))
    return alg


def minibatches(n_envs: int = 3, n: int = 8, seed: int = 0, same: bool = False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 8, 8, generator=g)
    y = torch.randint(0, 4, (n,), generator=g)
    return [(x.clone(), y.clone()) if same else (torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g))
            for _ in range(n_envs)]


def test_registry_and_hparams_agree_with_domainbed():
    assert set(A.ALGORITHMS.names()) == set(ALGORITHM_HPARAMS)
    assert {"ERM", "CORAL", "MMD", "GroupDRO", "Mixup", "IRM", "VREx", "DANN", "Fish", "SelfReg", "SagNet"} <= set(
        A.ALGORITHMS.names())
    # DomainBed's dataset-dependent defaults: small images lr 1e-3 / batch 64, large 5e-5 / batch 32
    assert default_hparams("ERM", "small")["lr"] == 1e-3 and default_hparams("ERM", "small")["batch_size"] == 64
    assert default_hparams("ERM", "large")["lr"] == 5e-5 and default_hparams("ERM", "large")["batch_size"] == 32
    assert hparams_for("CORAL", "small", 0, 5) == default_hparams("CORAL", "small")
    # hparams seed h > 0: DomainBed's random_hparams(seed_hash(h, trial)), each hparam its own RandomState
    drawn = hparams_for("CORAL", "small", 3, 1)
    assert drawn == random_hparams("CORAL", "small", seed_hash(3, 1))
    r = np.random.RandomState(seed_hash(seed_hash(3, 1), "mmd_gamma"))
    assert drawn["mmd_gamma"] == pytest.approx(10 ** r.uniform(-1, 1))
    assert 10 ** -4.5 <= drawn["lr"] <= 10 ** -2.5 and 8 <= drawn["batch_size"] <= 512
    import hashlib

    # DomainBed's misc.seed_hash: md5 of str(args), mod 2^31
    assert seed_hash(1, 2) == int(hashlib.md5(b"(1, 2)").hexdigest(), 16) % 2**31


def test_coral_penalty_zero_for_identical_batches_and_grows_with_shift():
    coral = make("CORAL")
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(1))
    assert coral.mmd(x, x).item() == pytest.approx(0.0, abs=1e-7)
    shifts = [coral.mmd(x, x + s).item() for s in (0.1, 0.5, 1.0)]
    assert 0 < shifts[0] < shifts[1] < shifts[2]  # a mean shift
    scales = [coral.mmd(x, x * s).item() for s in (1.2, 2.0)]
    assert 0 < scales[0] < scales[1]  # a covariance change


def test_mmd_gaussian_penalty_zero_for_identical_batches_and_grows_with_shift():
    mmd = make("MMD")
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(2))
    assert mmd.mmd(x, x).item() == pytest.approx(0.0, abs=1e-5)
    assert 0 < mmd.mmd(x, x + 0.2).item() < mmd.mmd(x, x + 1.0).item()


def test_groupdro_raises_the_weight_of_the_worst_environment():
    dro = make("GroupDRO", groupdro_eta=1.0)
    mbs = minibatches(3, 16, seed=3, same=True)
    x, y = mbs[0]
    # environment 2 is made much harder: its labels are scrambled and its inputs scaled up
    mbs[2] = (x * 5, (y + 1) % 4)
    dro.update(mbs)
    q = dro.q.tolist()
    assert q[2] > q[0] and q[2] > q[1] and sum(q) == pytest.approx(1.0)


def test_irm_penalty_is_zero_at_a_stationary_classifier_and_positive_away_from_it():
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    assert A.IRM._irm_penalty(torch.zeros(8, 4), y).item() == 0.0  # CE(s * 0) does not depend on s
    # correct but under-confident logits: both halves want a larger scale, so grad_1 * grad_2 > 0
    logits = F.one_hot(y, 4).float() * 0.5
    assert A.IRM._irm_penalty(logits, y).item() > 0
    # at the scale minimising each half's loss, the penalty vanishes
    s = torch.linspace(0.1, 20, 20000)
    best = s[torch.stack([F.cross_entropy(logits * v, y) for v in s]).argmin()]
    away = A.IRM._irm_penalty(logits, y).item()
    assert abs(A.IRM._irm_penalty(logits * best, y).item()) < 1e-4 * away


def test_irm_anneals_then_resets_adam():
    irm = make("IRM", irm_penalty_anneal_iters=2)
    opts = []
    for _ in range(4):
        irm.update(minibatches(3, 8, seed=4))
        opts.append(id(irm.optimizer))
    assert opts[1] != opts[2] and opts[2] == opts[3]  # Adam rebuilt at the step the penalty switches on
    assert int(irm.update_count) == 4


def test_vrex_penalty_is_the_variance_of_environment_risks():
    vrex = make("VREx")
    same = vrex.update(minibatches(3, 8, seed=5, same=True))
    assert same["penalty"] == pytest.approx(0.0, abs=1e-12)  # identical environments: equal risks
    different = vrex.update(minibatches(3, 8, seed=6))
    assert different["penalty"] > 0


def test_mixup_targets_are_the_mixed_labels():
    mix = make("Mixup", mixup_alpha=0.7)
    mbs = minibatches(3, 8, seed=7)
    net = copy.deepcopy(mix.network)
    torch.manual_seed(11)
    np.random.seed(11)
    expected = 0
    for (xi, yi), (xj, yj) in A.random_pairs_of_minibatches(mbs):
        lam = np.random.beta(0.7, 0.7)
        pred = net(lam * xi + (1 - lam) * xj)
        expected += lam * F.cross_entropy(pred, yi) + (1 - lam) * F.cross_entropy(pred, yj)
    expected /= len(mbs)
    torch.manual_seed(11)
    np.random.seed(11)
    assert mix.update(mbs)["loss"] == pytest.approx(expected.item(), rel=1e-6)


def test_dann_alternates_discriminator_and_generator_steps():
    dann = make("DANN", d_steps_per_g_step=1)
    disc0 = copy.deepcopy(dann.discriminator.state_dict())
    feat0 = copy.deepcopy(dann.featurizer.state_dict())
    first = dann.update(minibatches(3, 8, seed=8))  # update_count 1: 1 % 2 < 1 is false -> generator
    assert set(first) == {"gen_loss"}
    assert all(torch.equal(disc0[k], v) for k, v in dann.discriminator.state_dict().items())
    assert not torch.equal(feat0["network.conv.weight"], dann.featurizer.state_dict()["network.conv.weight"])
    feat1 = copy.deepcopy(dann.featurizer.state_dict())
    second = dann.update(minibatches(3, 8, seed=9))  # update_count 2 -> discriminator
    assert set(second) == {"disc_loss"}
    assert torch.equal(feat1["network.conv.weight"], dann.featurizer.state_dict()["network.conv.weight"])
    assert not torch.equal(disc0["input.weight"], dann.discriminator.state_dict()["input.weight"])


@pytest.mark.parametrize("meta_lr", [1.0, 0.5])
def test_fish_moves_the_meta_weights_towards_the_inner_loop_weights(meta_lr):
    fish = make("Fish", meta_lr=meta_lr)
    meta0 = copy.deepcopy(fish.network.state_dict())
    fish.update(minibatches(3, 8, seed=10))
    inner = fish.network_inner.state_dict()
    for k, v in fish.network.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(v, meta0[k] + meta_lr * (inner[k] - meta0[k]), atol=1e-6), k


def test_selfreg_loss_is_domainbeds_when_each_class_is_one_point():
    sr = make("SelfReg")
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(12))
    y = torch.arange(4)
    # Every class is one repeated image: shuffling and mixing within a class change nothing, so the logit
    # terms vanish and each feature term is 0.3 * MSE(feat, proj), whatever lambda: DomainBed's loss is
    # CE + min(CE, 1) * 0.3 * MSE(feat, cdpl(feat)).
    mbs = [(x.repeat(2, 1, 1, 1), y.repeat(2)) for _ in range(2)]
    feat_net, head, cdpl = (copy.deepcopy(m).train() for m in (sr.featurizer, sr.classifier, sr.cdpl))
    all_x = torch.cat([m[0] for m in mbs])
    all_y = torch.cat([m[1] for m in mbs])
    feat = feat_net(all_x)
    ce = F.cross_entropy(head(feat), all_y)
    expected = ce + min(ce.item(), 1.0) * 0.3 * F.mse_loss(feat, cdpl(feat))
    assert sr.update(mbs)["loss"] == pytest.approx(expected.item(), rel=1e-5)
    params = {id(p) for g in sr.optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in params for p in sr.cdpl.parameters())  # DomainBed's optimizer leaves cdpl out


def test_sagnet_style_randomisation_keeps_content_and_content_randomisation_keeps_style():
    sag = make("SagNet")
    x = torch.randn(6, 16, generator=torch.Generator().manual_seed(13)) * 3 + 1
    torch.manual_seed(0)
    swapped = sag.randomize(x, "content")
    # content mode: each row keeps its own mean and variance (its style), with another row's normalised content
    assert torch.allclose(swapped.mean(-1), x.mean(-1), atol=1e-5)
    assert torch.allclose(swapped.var(-1), x.var(-1), rtol=1e-3)
    torch.manual_seed(0)
    styled = sag.randomize(x, "style")
    # style mode: the normalised pattern (content) of every row is unchanged
    norm = lambda t: (t - t.mean(-1, keepdim=True)) / t.std(-1, keepdim=True)  # noqa: E731
    assert torch.allclose(norm(styled), norm(x), atol=1e-4)
    out = sag.update(minibatches(3, 8, seed=14))
    assert set(out) == {"loss_c", "loss_s", "loss_adv"}


def test_erm_learns_and_every_algorithm_updates():
    erm = make("ERM", lr=1e-2)
    # a learnable task: the label is which of the first two channels is brighter, twice over
    x = torch.randn(48, 3, 8, 8, generator=torch.Generator().manual_seed(15))
    y = (x[:, 0].mean((1, 2)) > 0).long() + 2 * (x[:, 1].mean((1, 2)) > 0).long()
    mbs = [(x[i::3], y[i::3]) for i in range(3)]
    losses = [erm.update(mbs)["loss"] for _ in range(60)]
    assert losses[-1] < 0.5 * losses[0]
    for name in A.ALGORITHMS.names():
        alg = make(name)
        out = alg.update(minibatches(3, 8, seed=16))
        assert out and all(np.isfinite(v) for v in out.values()), name
        assert alg.predict(torch.randn(2, 3, 8, 8)).shape == (2, 4)
