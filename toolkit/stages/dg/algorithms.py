"""Domain generalization algorithms, as in DomainBed's `algorithms.py`.

Each is a class with `update(minibatches)` (one (x, y) minibatch per training environment) and
`predict(x)`, registered by name; its hyper-parameters live in `hparams.py`. The formulas are
DomainBed's, line for line (facebookresearch/DomainBed, domainbed/algorithms.py), with two mechanical
changes: the featurizer is an Augur backbone (timm, any --weights, optionally LoRA), and
`zero_grad(); backward(); step()` is `self.optimize(loss, optimizer)`, the training loop's step
(mixed precision, gradient all-reduce across processes, non-finite guard). Randomness (Mixup's Beta
draws, random pairings, SagNet's style swaps) uses the global generators, which the loop re-seeds at
every step.

One more, for the GPU: an update never waits for it. DomainBed returns `loss.item()` and branches on
tensors (`update_count`, SelfReg's per-element class intervals); here updates return detached tensors
(the loop averages them on the device), step counters have a host-side copy, random tensors are drawn
on the batch's device, and SelfReg's within-class shuffles are one sort. The values are DomainBed's;
tests/test_dg_algorithms.py checks each loss against its formula and runs every update under the
device audit (learn/audit.py).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
import torch.autograd as autograd
import torch.nn as nn
import torch.nn.functional as F

from ...core.registry import Registry
from ...learn.backbones import num_features
from ...learn.loop import Learner, optimizer_kwargs

ALGORITHMS = Registry("algorithm")


# ----------------------------------------------------------------------------- networks (DomainBed's networks.py)
class Featurizer(nn.Module):
    """A headless backbone with DomainBed's feature dropout and (optionally) frozen BatchNorm."""

    def __init__(self, backbone: nn.Module, hparams: dict[str, Any]):
        super().__init__()
        self.network = backbone
        self.n_outputs = num_features(backbone)
        self.dropout = nn.Dropout(hparams["resnet_dropout"])
        self.freeze = bool(hparams.get("freeze_bn", False))
        self.freeze_bn()

    def forward(self, x):
        return self.dropout(self.network(x))

    def train(self, mode: bool = True):
        super().train(mode)
        self.freeze_bn()
        return self

    def freeze_bn(self) -> None:
        if self.freeze:
            for m in self.network.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()


class MLP(nn.Module):
    """Just an MLP (DomainBed's networks.MLP)."""

    def __init__(self, n_inputs: int, n_outputs: int, hparams: dict[str, Any]):
        super().__init__()
        self.input = nn.Linear(n_inputs, hparams["mlp_width"])
        self.dropout = nn.Dropout(hparams["mlp_dropout"])
        self.hiddens = nn.ModuleList([nn.Linear(hparams["mlp_width"], hparams["mlp_width"])
                                      for _ in range(hparams["mlp_depth"] - 2)])
        self.output = nn.Linear(hparams["mlp_width"], n_outputs)
        self.n_outputs = n_outputs

    def forward(self, x):
        x = self.input(x)
        x = self.dropout(x)
        x = F.relu(x)
        for hidden in self.hiddens:
            x = hidden(x)
            x = self.dropout(x)
            x = F.relu(x)
        return self.output(x)


def Classifier(in_features: int, out_features: int, is_nonlinear: bool = False) -> nn.Module:
    if is_nonlinear:
        return nn.Sequential(nn.Linear(in_features, in_features // 2), nn.ReLU(),
                             nn.Linear(in_features // 2, in_features // 4), nn.ReLU(),
                             nn.Linear(in_features // 4, out_features))
    return nn.Linear(in_features, out_features)


def _adam(params, hparams, lr_key: str = "lr", wd_key: str = "weight_decay", **kw):
    return torch.optim.Adam([p for p in params if p.requires_grad], lr=hparams[lr_key],
                            weight_decay=hparams[wd_key], **kw, **optimizer_kwargs())


def random_pairs_of_minibatches(minibatches):
    perm = torch.randperm(len(minibatches), device="cpu").tolist()  # an order of environments, drawn on the host
    pairs = []
    for i in range(len(minibatches)):
        j = i + 1 if i < (len(minibatches) - 1) else 0
        xi, yi = minibatches[perm[i]][0], minibatches[perm[i]][1]
        xj, yj = minibatches[perm[j]][0], minibatches[perm[j]][1]
        min_n = min(len(xi), len(xj))
        pairs.append(((xi[:min_n], yi[:min_n]), (xj[:min_n], yj[:min_n])))
    return pairs


# ----------------------------------------------------------------------------- algorithms
class Algorithm(nn.Module, Learner):
    """update(minibatches) -> dict of floats; predict(x) -> logits (DomainBed's interface)."""

    def __init__(self, backbone: nn.Module, num_classes: int, num_domains: int, hparams: dict[str, Any]):
        super().__init__()
        self.hparams = hparams
        self.num_classes, self.num_domains = num_classes, num_domains

    def featurizer_of(self) -> nn.Module:
        return self.featurizer

    def _counter(self) -> None:
        """DomainBed's `update_count` buffer, with a host-side copy (branching on the buffer waits for the GPU).
        The buffer stays the checkpointed truth: a state load clears the copy, which is re-read once."""
        self.register_buffer("update_count", torch.tensor([0]))
        self._updates = 0
        self.register_load_state_dict_post_hook(_forget_count)

    def _count_updates(self) -> int:
        if self._updates is None:
            self._updates = int(self.update_count)
        return self._updates

    def _add_update(self) -> None:
        self._updates = self._count_updates() + 1
        self.update_count += 1


def _forget_count(module, incompatible_keys) -> None:
    module._updates = None


@ALGORITHMS.register("ERM")
class ERM(Algorithm):
    """Empirical Risk Minimization (ERM)"""

    def __init__(self, backbone, num_classes, num_domains, hparams):
        super().__init__(backbone, num_classes, num_domains, hparams)
        self.featurizer = Featurizer(backbone, hparams)
        self.classifier = Classifier(self.featurizer.n_outputs, num_classes, hparams["nonlinear_classifier"])
        self.network = nn.Sequential(self.featurizer, self.classifier)
        self.optimizer = _adam(self.network.parameters(), hparams)

    def update(self, minibatches):
        all_x = torch.cat([x for x, y in minibatches])
        all_y = torch.cat([y for x, y in minibatches])
        loss = F.cross_entropy(self.predict(all_x), all_y)
        self.optimize(loss, self.optimizer)
        return {"loss": loss.detach()}

    def predict(self, x):
        return self.network(x)


class AbstractMMD(ERM):
    """Perform ERM while matching the pair-wise domain feature distributions using MMD (abstract class)"""

    gaussian = True

    @staticmethod
    def my_cdist(x1, x2):
        x1_norm = x1.pow(2).sum(dim=-1, keepdim=True)
        x2_norm = x2.pow(2).sum(dim=-1, keepdim=True)
        res = torch.addmm(x2_norm.transpose(-2, -1), x1, x2.transpose(-2, -1), alpha=-2).add_(x1_norm)
        return res.clamp_min_(1e-30)

    def gaussian_kernel(self, x, y, gamma=(0.001, 0.01, 0.1, 1, 10, 100, 1000)):
        D = self.my_cdist(x, y)
        K = torch.zeros_like(D)
        for g in gamma:
            K.add_(torch.exp(D.mul(-g)))
        return K

    def mmd(self, x, y):
        if self.gaussian:
            Kxx = self.gaussian_kernel(x, x).mean()
            Kyy = self.gaussian_kernel(y, y).mean()
            Kxy = self.gaussian_kernel(x, y).mean()
            return Kxx + Kyy - 2 * Kxy
        mean_x = x.mean(0, keepdim=True)
        mean_y = y.mean(0, keepdim=True)
        cent_x = x - mean_x
        cent_y = y - mean_y
        cova_x = (cent_x.t() @ cent_x) / (len(x) - 1)
        cova_y = (cent_y.t() @ cent_y) / (len(y) - 1)
        mean_diff = (mean_x - mean_y).pow(2).mean()
        cova_diff = (cova_x - cova_y).pow(2).mean()
        return mean_diff + cova_diff

    def update(self, minibatches):
        objective = 0
        penalty = 0
        nmb = len(minibatches)
        features = [self.featurizer(xi) for xi, _ in minibatches]
        classifs = [self.classifier(fi) for fi in features]
        targets = [yi for _, yi in minibatches]
        for i in range(nmb):
            objective += F.cross_entropy(classifs[i], targets[i])
            for j in range(i + 1, nmb):
                penalty += self.mmd(features[i], features[j])
        objective /= nmb
        if nmb > 1:
            penalty /= nmb * (nmb - 1) / 2
        self.optimize(objective + (self.hparams["mmd_gamma"] * penalty), self.optimizer)
        if torch.is_tensor(penalty):
            penalty = penalty.detach()
        return {"loss": objective.detach(), "penalty": penalty}


@ALGORITHMS.register("MMD")
class MMD(AbstractMMD):
    """MMD using Gaussian kernel"""

    gaussian = True


@ALGORITHMS.register("CORAL")
class CORAL(AbstractMMD):
    """MMD using mean and covariance difference"""

    gaussian = False


@ALGORITHMS.register("GroupDRO")
class GroupDRO(ERM):
    """Robust ERM minimizes the error at the worst minibatch (Algorithm 1 of Sagawa et al., 2020)"""

    def __init__(self, backbone, num_classes, num_domains, hparams):
        super().__init__(backbone, num_classes, num_domains, hparams)
        # One weight per training environment from the start (DomainBed sizes it at the first update):
        # a fixed shape is what a checkpoint can restore.
        self.register_buffer("q", torch.ones(num_domains))

    def update(self, minibatches):
        device = minibatches[0][0].device
        losses = torch.zeros(len(minibatches), device=device)
        for m in range(len(minibatches)):
            x, y = minibatches[m]
            losses[m] = F.cross_entropy(self.predict(x), y)
            self.q[m] *= (self.hparams["groupdro_eta"] * losses[m].data).exp()
        self.q /= self.q.sum()
        loss = torch.dot(losses, self.q)
        self.optimize(loss, self.optimizer)
        return {"loss": loss.detach()}


@ALGORITHMS.register("Mixup")
class Mixup(ERM):
    """Mixup of minibatches from different domains (Xu et al., 2020; Yan et al., 2020)"""

    def update(self, minibatches):
        objective = 0
        for (xi, yi), (xj, yj) in random_pairs_of_minibatches(minibatches):
            lam = np.random.beta(self.hparams["mixup_alpha"], self.hparams["mixup_alpha"])
            x = lam * xi + (1 - lam) * xj
            predictions = self.predict(x)
            objective += lam * F.cross_entropy(predictions, yi)
            objective += (1 - lam) * F.cross_entropy(predictions, yj)
        objective /= len(minibatches)
        self.optimize(objective, self.optimizer)
        return {"loss": objective.detach()}


@ALGORITHMS.register("IRM")
class IRM(ERM):
    """Invariant Risk Minimization"""

    def __init__(self, backbone, num_classes, num_domains, hparams):
        super().__init__(backbone, num_classes, num_domains, hparams)
        self._counter()

    @staticmethod
    def _irm_penalty(logits, y):
        scale = torch.tensor(1.0, device=logits.device).requires_grad_()
        loss_1 = F.cross_entropy(logits[::2] * scale, y[::2])
        loss_2 = F.cross_entropy(logits[1::2] * scale, y[1::2])
        grad_1 = autograd.grad(loss_1, [scale], create_graph=True)[0]
        grad_2 = autograd.grad(loss_2, [scale], create_graph=True)[0]
        return torch.sum(grad_1 * grad_2)

    def update(self, minibatches):
        count = self._count_updates()
        penalty_weight = (self.hparams["irm_lambda"] if count >= self.hparams["irm_penalty_anneal_iters"]
                          else 1.0)
        nll = 0.0
        penalty = 0.0
        all_x = torch.cat([x for x, y in minibatches])
        all_logits = self.network(all_x)
        all_logits_idx = 0
        for i, (x, y) in enumerate(minibatches):
            logits = all_logits[all_logits_idx:all_logits_idx + x.shape[0]]
            all_logits_idx += x.shape[0]
            nll += F.cross_entropy(logits, y)
            penalty += self._irm_penalty(logits, y)
        nll /= len(minibatches)
        penalty /= len(minibatches)
        loss = nll + (penalty_weight * penalty)
        if count == self.hparams["irm_penalty_anneal_iters"]:
            # Reset Adam, because it doesn't like the sharp jump in gradient
            # magnitudes that happens at this step.
            self.optimizer = _adam(self.network.parameters(), self.hparams)
        self.optimize(loss, self.optimizer)
        self._add_update()
        return {"loss": loss.detach(), "nll": nll.detach(), "penalty": penalty.detach(),
                "penalty_weight": penalty_weight}


@ALGORITHMS.register("VREx")
class VREx(ERM):
    """V-REx algorithm from http://arxiv.org/abs/2003.00688"""

    def __init__(self, backbone, num_classes, num_domains, hparams):
        super().__init__(backbone, num_classes, num_domains, hparams)
        self._counter()

    def update(self, minibatches):
        count = self._count_updates()
        if count >= self.hparams["vrex_penalty_anneal_iters"]:
            penalty_weight = self.hparams["vrex_lambda"]
        else:
            penalty_weight = 1.0
        nll = 0.0
        all_x = torch.cat([x for x, y in minibatches])
        all_logits = self.network(all_x)
        all_logits_idx = 0
        losses = torch.zeros(len(minibatches), device=all_x.device)
        for i, (x, y) in enumerate(minibatches):
            logits = all_logits[all_logits_idx:all_logits_idx + x.shape[0]]
            all_logits_idx += x.shape[0]
            nll = F.cross_entropy(logits, y)
            losses[i] = nll
        mean = losses.mean()
        penalty = ((losses - mean) ** 2).mean()
        loss = mean + penalty_weight * penalty
        if count == self.hparams["vrex_penalty_anneal_iters"]:
            # Reset Adam (like IRM), because it doesn't like the sharp jump in
            # gradient magnitudes that happens at this step.
            self.optimizer = _adam(self.network.parameters(), self.hparams)
        self.optimize(loss, self.optimizer)
        self._add_update()
        return {"loss": loss.detach(), "nll": nll.detach(), "penalty": penalty.detach(),
                "penalty_weight": penalty_weight}


class AbstractDANN(Algorithm):
    """Domain-Adversarial Neural Networks (abstract class)"""

    conditional = False
    class_balance = False

    def __init__(self, backbone, num_classes, num_domains, hparams):
        super().__init__(backbone, num_classes, num_domains, hparams)
        self._counter()
        self.featurizer = Featurizer(backbone, hparams)
        self.classifier = Classifier(self.featurizer.n_outputs, num_classes, hparams["nonlinear_classifier"])
        self.discriminator = MLP(self.featurizer.n_outputs, num_domains, hparams)
        self.class_embeddings = nn.Embedding(num_classes, self.featurizer.n_outputs)
        self.disc_opt = _adam(list(self.discriminator.parameters()) + list(self.class_embeddings.parameters()),
                              hparams, "lr_d", "weight_decay_d", betas=(hparams["beta1"], 0.9))
        self.gen_opt = _adam(list(self.featurizer.parameters()) + list(self.classifier.parameters()),
                             hparams, "lr_g", "weight_decay_g", betas=(hparams["beta1"], 0.9))

    def optimizers(self):
        return {"disc_opt": self.disc_opt, "gen_opt": self.gen_opt}

    def update(self, minibatches):
        device = minibatches[0][0].device
        self._add_update()
        all_x = torch.cat([x for x, y in minibatches])
        all_y = torch.cat([y for x, y in minibatches])
        all_z = self.featurizer(all_x)
        if self.conditional:
            disc_input = all_z + self.class_embeddings(all_y)
        else:
            disc_input = all_z
        disc_out = self.discriminator(disc_input)
        disc_labels = torch.cat([torch.full((x.shape[0],), i, dtype=torch.int64, device=device)
                                 for i, (x, y) in enumerate(minibatches)])
        if self.class_balance:
            # DomainBed's F.one_hot(all_y) sizes the count vector by the batch's largest label + 1 and weighs
            # by 1 / (count * that size); sized by num_classes (no wait for the GPU), with the same factor.
            y_counts = F.one_hot(all_y, self.num_classes).sum(dim=0)
            weights = 1.0 / (y_counts[all_y] * (all_y.max() + 1)).float()
            disc_loss = F.cross_entropy(disc_out, disc_labels, reduction="none")
            disc_loss = (weights * disc_loss).sum()
        else:
            disc_loss = F.cross_entropy(disc_out, disc_labels)
        input_grad = autograd.grad(F.cross_entropy(disc_out, disc_labels, reduction="sum"), [disc_input],
                                   create_graph=True)[0]
        grad_penalty = (input_grad ** 2).sum(dim=1).mean(dim=0)
        disc_loss += self.hparams["grad_penalty"] * grad_penalty
        d_steps_per_g = self.hparams["d_steps_per_g_step"]
        if self._count_updates() % (1 + d_steps_per_g) < d_steps_per_g:
            self.optimize(disc_loss, self.disc_opt)
            return {"disc_loss": disc_loss.detach()}
        all_preds = self.classifier(all_z)
        classifier_loss = F.cross_entropy(all_preds, all_y)
        gen_loss = classifier_loss + (self.hparams["lambda"] * -disc_loss)
        self.disc_opt.zero_grad()
        self.optimize(gen_loss, self.gen_opt)
        return {"gen_loss": gen_loss.detach()}

    def predict(self, x):
        return self.classifier(self.featurizer(x))


@ALGORITHMS.register("DANN")
class DANN(AbstractDANN):
    """Unconditional DANN"""


@ALGORITHMS.register("CDANN")
class CDANN(AbstractDANN):
    """Conditional DANN"""

    conditional = True
    class_balance = True


class WholeFish(nn.Module):
    def __init__(self, featurizer, classifier):
        super().__init__()
        self.net = nn.Sequential(featurizer, classifier)

    def reset_weights(self, weights):
        self.load_state_dict(copy.deepcopy(weights))

    def forward(self, x):
        return self.net(x)


@ALGORITHMS.register("Fish")
class Fish(Algorithm):
    """Implementation of Fish, as seen in Gradient Matching for Domain Generalization, Shi et al. 2021."""

    def __init__(self, backbone, num_classes, num_domains, hparams):
        super().__init__(backbone, num_classes, num_domains, hparams)
        self.featurizer = Featurizer(backbone, hparams)
        self.network = WholeFish(self.featurizer,
                                 Classifier(self.featurizer.n_outputs, num_classes, hparams["nonlinear_classifier"]))
        self.optimizer = _adam(self.network.parameters(), hparams)
        # DomainBed clones the network at every update and carries the inner Adam's state across
        # updates; one persistent clone, reloaded from the meta weights each update, is the same thing
        # and keeps the inner state in the checkpoint.
        self.network_inner = copy.deepcopy(self.network)
        self.optimizer_inner = _adam(self.network_inner.parameters(), hparams)

    def optimizers(self):
        return {"optimizer": self.optimizer, "optimizer_inner": self.optimizer_inner}

    @staticmethod
    def fish(meta_weights, inner_weights, lr_meta):
        out = {}
        for k, meta in meta_weights.items():
            step = meta + lr_meta * (inner_weights[k] - meta)  # ParamDict arithmetic, per tensor
            out[k] = step.to(meta.dtype)
        return out

    def update(self, minibatches):
        self.network_inner.load_state_dict(self.network.state_dict())
        for x, y in minibatches:
            loss = F.cross_entropy(self.network_inner(x), y)
            self.optimize(loss, self.optimizer_inner)
        meta_weights = self.fish(meta_weights=self.network.state_dict(), inner_weights=self.network_inner.state_dict(),
                                 lr_meta=self.hparams["meta_lr"])
        self.network.reset_weights(meta_weights)
        return {"loss": loss.detach()}

    def predict(self, x):
        return self.network(x)


@ALGORITHMS.register("SelfReg")
class SelfReg(ERM):
    def __init__(self, backbone, num_classes, num_domains, hparams):
        super().__init__(backbone, num_classes, num_domains, hparams)
        self.MSEloss = nn.MSELoss()
        input_feat_size = self.featurizer.n_outputs
        hidden_size = input_feat_size if input_feat_size == 2048 else input_feat_size * 2
        self.cdpl = nn.Sequential(
            nn.Linear(input_feat_size, hidden_size), nn.BatchNorm1d(hidden_size), nn.ReLU(inplace=True),
            nn.Linear(hidden_size, hidden_size), nn.BatchNorm1d(hidden_size), nn.ReLU(inplace=True),
            nn.Linear(hidden_size, input_feat_size), nn.BatchNorm1d(input_feat_size))
        # DomainBed's optimizer (built in ERM.__init__) covers self.network only; cdpl is not optimized there.

    def update(self, minibatches):
        all_x = torch.cat([x for x, y in minibatches])
        all_y = torch.cat([y for _, y in minibatches])
        lam = np.random.beta(0.5, 0.5)
        # cluster and order features into same-class group (DomainBed sorts, then copies row by row)
        with torch.no_grad():
            sorted_y, indices = torch.sort(all_y)
            all_x = all_x[indices]
            all_y = sorted_y
        feat = self.featurizer(all_x)
        proj = self.cdpl(feat)
        output = self.classifier(feat)
        # shuffle: DomainBed draws torch.randperm within each class interval and copies row by row; two
        # random permutations within each class, as one sort of (class, uniform) keys each.
        shuffle = _within_class_permutation(all_y)
        shuffle2 = _within_class_permutation(all_y)
        output_2, feat_2 = output[shuffle], proj[shuffle]
        output_3, feat_3 = output[shuffle2], proj[shuffle2]
        # mixup
        output_3 = lam * output_2 + (1 - lam) * output_3
        feat_3 = lam * feat_2 + (1 - lam) * feat_3
        # regularization
        L_ind_logit = self.MSEloss(output, output_2)
        L_hdl_logit = self.MSEloss(output, output_3)
        L_ind_feat = 0.3 * self.MSEloss(feat, feat_2)
        L_hdl_feat = 0.3 * self.MSEloss(feat, feat_3)
        cl_loss = F.cross_entropy(output, all_y)
        C_scale = torch.clamp(cl_loss.detach(), max=1.0)  # DomainBed: min(cl_loss.item(), 1.0)
        loss = cl_loss + C_scale * (lam * (L_ind_logit + L_ind_feat) + (1 - lam) * (L_hdl_logit + L_hdl_feat))
        self.optimize(loss, self.optimizer)
        return {"loss": loss.detach()}


def _within_class_permutation(sorted_y):
    """A uniformly random permutation of the rows of each class, for labels sorted ascending."""
    keys = sorted_y.to(torch.float64) + torch.rand(len(sorted_y), device=sorted_y.device, dtype=torch.float64)
    return torch.argsort(keys)


@ALGORITHMS.register("SagNet")
class SagNet(Algorithm):
    """Style Agnostic Network, Algorithm 1 from https://arxiv.org/abs/1910.11645"""

    def __init__(self, backbone, num_classes, num_domains, hparams):
        super().__init__(backbone, num_classes, num_domains, hparams)
        self.network_f = Featurizer(backbone, hparams)  # featurizer network
        self.network_c = Classifier(self.network_f.n_outputs, num_classes, hparams["nonlinear_classifier"])
        self.network_s = Classifier(self.network_f.n_outputs, num_classes, hparams["nonlinear_classifier"])
        self.optimizer_f = _adam(self.network_f.parameters(), hparams)
        self.optimizer_c = _adam(self.network_c.parameters(), hparams)
        self.optimizer_s = _adam(self.network_s.parameters(), hparams)
        self.weight_adv = hparams["sag_w_adv"]

    def featurizer_of(self):
        return self.network_f

    def optimizers(self):
        return {"optimizer_f": self.optimizer_f, "optimizer_c": self.optimizer_c, "optimizer_s": self.optimizer_s}

    def forward_c(self, x):
        # learning content network on randomized style
        return self.network_c(self.randomize(self.network_f(x), "style"))

    def forward_s(self, x):
        # learning style network on randomized content
        return self.network_s(self.randomize(self.network_f(x), "content"))

    def randomize(self, x, what="style", eps=1e-5):
        sizes = x.size()
        alpha = torch.rand(sizes[0], 1, device=x.device)
        if len(sizes) == 4:
            x = x.view(sizes[0], sizes[1], -1)
            alpha = alpha.unsqueeze(-1)
        mean = x.mean(-1, keepdim=True)
        var = x.var(-1, keepdim=True)
        x = (x - mean) / (var + eps).sqrt()
        idx_swap = torch.randperm(sizes[0], device=x.device)
        if what == "style":
            mean = alpha * mean + (1 - alpha) * mean[idx_swap]
            var = alpha * var + (1 - alpha) * var[idx_swap]
        else:
            x = x[idx_swap].detach()
        x = x * (var + eps).sqrt() + mean
        return x.view(*sizes)

    def update(self, minibatches):
        all_x = torch.cat([x for x, y in minibatches])
        all_y = torch.cat([y for x, y in minibatches])
        # learn content
        loss_c = F.cross_entropy(self.forward_c(all_x), all_y)
        self.optimize(loss_c, self.optimizer_f, self.optimizer_c)
        # learn style
        loss_s = F.cross_entropy(self.forward_s(all_x), all_y)
        self.optimize(loss_s, self.optimizer_s)
        # learn adversary
        loss_adv = -F.log_softmax(self.forward_s(all_x), dim=1).mean(1).mean()
        loss_adv = loss_adv * self.weight_adv
        self.optimize(loss_adv, self.optimizer_f)
        return {"loss_c": loss_c.detach(), "loss_s": loss_s.detach(), "loss_adv": loss_adv.detach()}

    def predict(self, x):
        return self.network_c(self.network_f(x))
