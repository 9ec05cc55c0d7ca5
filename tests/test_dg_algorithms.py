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
from toolkit.stages.dg.hparams import (ALGORITHM_HPARAMS, default_hparams, hparam_class, hparams_for, random_hparams,
                                      seed_hash)


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
    hparams = {**default_hparams(name, "mnist-cnn"), **hp}
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
    # DomainBed's two regimes: its MNIST CNN from scratch (lr 1e-3, batch 64, no weight decay searched), its
    # pretrained ResNet (lr 5e-5, batch 32, weight decay searched)
    small, large = default_hparams("DANN", "mnist-cnn"), default_hparams("DANN", "resnet", pretrained=True)
    assert (small["lr"], small["batch_size"], small["lr_g"], small["lr_d"]) == (1e-3, 64, 1e-3, 1e-3)
    assert (large["lr"], large["batch_size"], large["lr_g"], large["lr_d"]) == (5e-5, 32, 5e-5, 5e-5)
    assert large["freeze_bn"] and not small["freeze_bn"]
    draws = [random_hparams("ERM", c, s) for c in ("mnist-cnn", "resnet") for s in range(40)]
    assert {d["weight_decay"] for d in draws[:40]} == {0.0} and len({d["weight_decay"] for d in draws[40:]}) == 40
    # DomainBed draws resnet_dropout for RotatedMNIST too, but its MNIST CNN has no dropout to apply it to
    assert {d["resnet_dropout"] for d in draws[:40]} == {0.0} and {d["resnet_dropout"] for d in draws[40:]} == {0.0, 0.1, 0.5}
    # the regime follows the network: random init on small images, or anything else
    assert hparam_class(False, 8) == hparam_class(False, 32) == "mnist-cnn"  # digits, a 28 px RotatedMNIST folder
    assert hparam_class(True, 32) == "resnet"  # ImageNet weights on digits: DomainBed's pretrained lr
    assert hparam_class(False, 227) == hparam_class(True, 227) == "resnet"  # PACS
    assert hparams_for("CORAL", "mnist-cnn", 0, 5) == default_hparams("CORAL", "mnist-cnn")
    # hparams seed h > 0: DomainBed's random_hparams(seed_hash(h, trial)), each hparam its own RandomState
    drawn = hparams_for("CORAL", "mnist-cnn", 3, 1)
    assert drawn == random_hparams("CORAL", "mnist-cnn", seed_hash(3, 1))
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


def test_groupdro_reweights_environments_by_the_exponentiated_loss():
    """Sagawa et al.'s Algorithm 1 as DomainBed writes it: q <- normalise(q * exp(eta * loss_e)), and the
    loss is sum_e q_e loss_e with the updated q."""
    dro = make("GroupDRO", groupdro_eta=0.7)
    mbs = minibatches(3, 16, seed=3)
    for _ in range(3):  # q carries over from update to update
        q0 = dro.q.clone()
        net = copy.deepcopy(dro.network).train()
        losses = torch.stack([F.cross_entropy(net(x), y) for x, y in mbs]).detach()
        expected_q = q0 * torch.exp(0.7 * losses)
        expected_q /= expected_q.sum()
        out = dro.update(mbs)
        assert torch.allclose(dro.q, expected_q, rtol=1e-5)
        assert out["loss"].item() == pytest.approx(float((expected_q * losses).sum()), rel=1e-5)
    assert not torch.allclose(dro.q, torch.full((3,), 1 / 3))  # unequal losses moved the weights


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


def test_irm_loss_is_nll_plus_the_annealed_penalty():
    """loss = nll + w * penalty, w = 1 before irm_penalty_anneal_iters updates and irm_lambda from then on;
    Adam is rebuilt at the step the weight switches."""
    irm = make("IRM", irm_penalty_anneal_iters=2, irm_lambda=50.0)
    opts, weights = [], []
    for step in range(4):
        mbs = minibatches(3, 8, seed=4 + step)
        net = copy.deepcopy(irm.network).train()
        logits = net(torch.cat([x for x, _ in mbs])).detach().split(8)  # one forward over all environments
        nll = float(sum(F.cross_entropy(lg, y) for lg, (_, y) in zip(logits, mbs)) / 3)
        penalty = float(sum(A.IRM._irm_penalty(lg, y) for lg, (_, y) in zip(logits, mbs)) / 3)
        out = irm.update(mbs)
        weights.append(out["penalty_weight"])
        opts.append(id(irm.optimizer))
        assert out["nll"].item() == pytest.approx(nll, rel=1e-5)
        assert out["penalty"].item() == pytest.approx(penalty, rel=1e-4, abs=1e-9)
        assert out["loss"].item() == pytest.approx(nll + weights[-1] * penalty, rel=1e-5)
    assert weights == [1.0, 1.0, 50.0, 50.0]
    assert opts[1] != opts[2] and opts[2] == opts[3]  # Adam rebuilt at the step the penalty switches on
    assert int(irm.update_count) == 4


def test_vrex_penalty_is_the_variance_of_environment_risks_and_anneals():
    vrex = make("VREx", vrex_penalty_anneal_iters=1, vrex_lambda=7.0)
    same = vrex.update(minibatches(3, 8, seed=5, same=True))
    assert same["penalty"].item() == pytest.approx(0.0, abs=1e-12)  # identical environments: equal risks
    assert same["penalty_weight"] == 1.0
    mbs = minibatches(3, 8, seed=6)
    net = copy.deepcopy(vrex.network).train()
    logits = net(torch.cat([x for x, _ in mbs])).detach().split(8)
    risks = torch.stack([F.cross_entropy(lg, y) for lg, (_, y) in zip(logits, mbs)])
    out = vrex.update(mbs)
    assert out["penalty"].item() == pytest.approx(float(risks.var(unbiased=False)), rel=1e-5)
    assert out["penalty"].item() > 0 and out["penalty_weight"] == 7.0
    assert out["loss"].item() == pytest.approx(float(risks.mean() + 7.0 * risks.var(unbiased=False)), rel=1e-5)


def test_cdann_conditions_the_discriminator_and_balances_classes():
    """CDANN's discriminator sees z + embedding(y), and its loss weighs each sample by DomainBed's
    1 / (count(y in the batch) * (max label + 1))."""
    cdann = make("CDANN", d_steps_per_g_step=1, grad_penalty=0.0)
    cdann._add_update()  # the next update is a discriminator step (update_count 2)
    mbs = minibatches(3, 8, seed=17)
    feat, disc, emb = (copy.deepcopy(m).train() for m in (cdann.featurizer, cdann.discriminator, cdann.class_embeddings))
    all_x = torch.cat([x for x, _ in mbs])
    all_y = torch.cat([y for _, y in mbs])
    z = feat(all_x)
    out = disc(z + emb(all_y))
    d_labels = torch.cat([torch.full((8,), i) for i in range(3)])
    counts = torch.bincount(all_y)
    weights = 1.0 / (counts[all_y] * len(counts)).float()
    expected = (weights * F.cross_entropy(out, d_labels, reduction="none")).sum()
    got = cdann.update(mbs)
    assert set(got) == {"disc_loss"} and got["disc_loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    # unconditional DANN: the same batch, the discriminator sees z alone, plain mean cross-entropy
    dann = make("DANN", d_steps_per_g_step=1, grad_penalty=0.0)
    dann._add_update()
    feat, disc = copy.deepcopy(dann.featurizer).train(), copy.deepcopy(dann.discriminator).train()
    expected = F.cross_entropy(disc(feat(all_x)), d_labels)
    assert dann.update(mbs)["disc_loss"].item() == pytest.approx(expected.item(), rel=1e-5)


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
    assert mix.update(mbs)["loss"].item() == pytest.approx(expected.item(), rel=1e-6)


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
    assert sr.update(mbs)["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
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
    losses = [erm.update(mbs)["loss"].item() for _ in range(60)]
    assert losses[-1] < 0.5 * losses[0]
    for name in A.ALGORITHMS.names():
        alg = make(name)
        out = alg.update(minibatches(3, 8, seed=16))
        assert out and all(np.isfinite(float(v)) for v in out.values()), name
        assert alg.predict(torch.randn(2, 3, 8, 8)).shape == (2, 4)
