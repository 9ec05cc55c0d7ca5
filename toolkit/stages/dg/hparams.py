"""Hyper-parameters of every DG algorithm, in one place, as DomainBed's `hparams_registry.py`.

Each hyper-parameter has a default and a random-search distribution (a function of a numpy
RandomState). A few depend on the *hyper-parameter class*. DomainBed has two regimes, one per network:
its SMALL_IMAGES datasets (RotatedMNIST, ColoredMNIST) train its MNIST CNN from scratch (lr 1e-3, no
weight decay, batch 64), every image folder (PACS, VLCS, ...) fine-tunes its ImageNet ResNet (lr 5e-5,
weight decay searched, batch 32, feature dropout). Augur has any backbone with any weights on any data,
so it picks the regime by what the network is (`hparam_class`): random init on small images is the
MNIST-CNN regime; pretrained weights (whatever the image size), or images larger than DomainBed's small
ones, are the ResNet regime. So ImageNet weights on digits get the pretrained lr, as DomainBed pairs
them, and a DomainBed-layout RotatedMNIST folder from scratch gets the small-image regime, as its name
would in DomainBed.

A sweep draws hyper-parameters exactly as DomainBed does: hparams seed 0 is the defaults; seed h > 0
draws each one from RandomState(seed_hash(seed_hash(h, trial_seed), name)). Names are DomainBed's, so
result rows compare one to one. Augur adds `freeze_bn` (DomainBed's ResNet of the paper freezes
BatchNorm; here that is the default only for pretrained weights) and SWAD's settings.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from ...core.settings import HP

# The two regimes (see the module docstring) and when each applies.
HPARAM_CLASSES = {
    "mnist-cnn": "random init on images of at most 32 px: DomainBed's SMALL_IMAGES regime (its MNIST CNN trained "
                 "from scratch on RotatedMNIST, ColoredMNIST)",
    "resnet": "pretrained weights, or images over 32 px: DomainBed's image-folder regime (its ImageNet ResNet "
              "fine-tuned on PACS, VLCS, OfficeHome, ...)",
}
SMALL_IMAGE_PX = 32  # DomainBed's small datasets are 28 px; its Featurizer switches networks at 28/32 vs 224


def hparam_class(pretrained: bool, image_px: int) -> str:
    """The regime of a network: from scratch on small images, or anything else (see HPARAM_CLASSES)."""
    return "mnist-cnn" if not pretrained and image_px <= SMALL_IMAGE_PX else "resnet"


def seed_hash(*args: Any) -> int:
    """DomainBed's misc.seed_hash: an integer hash of all args, for use as a random seed."""
    return int(hashlib.md5(str(args).encode("utf-8")).hexdigest(), 16) % (2**31)


# Per-algorithm hyper-parameters (DomainBed's algorithm-specific blocks).
ALGORITHM_HPARAMS: dict[str, dict[str, HP]] = {
    "ERM": {},
    "CORAL": {"mmd_gamma": HP(1.0, "Weight of the mean/covariance penalty.", min=0.0,
                              search=lambda r: 10 ** r.uniform(-1, 1))},
    "MMD": {"mmd_gamma": HP(1.0, "Weight of the Gaussian-kernel MMD penalty.", min=0.0,
                            search=lambda r: 10 ** r.uniform(-1, 1))},
    "GroupDRO": {"groupdro_eta": HP(1e-2, "Step size of the environment weights.", min=0.0,
                                    search=lambda r: 10 ** r.uniform(-3, -1))},
    "Mixup": {"mixup_alpha": HP(0.2, "Beta(alpha, alpha) mixing distribution.", min=0.0, min_open=True,
                                search=lambda r: 10 ** r.uniform(-1, 1))},
    "IRM": {"irm_lambda": HP(1e2, "Penalty weight after annealing.", min=0.0, search=lambda r: 10 ** r.uniform(-1, 5)),
            "irm_penalty_anneal_iters": HP(500, "Steps with penalty weight 1 (Adam is reset when they end).",
                                           min=0, search=lambda r: int(10 ** r.uniform(0, 4)))},
    "VREx": {"vrex_lambda": HP(1e1, "Variance penalty weight after annealing.", min=0.0,
                               search=lambda r: 10 ** r.uniform(-1, 5)),
             "vrex_penalty_anneal_iters": HP(500, "Steps with penalty weight 1 (Adam is reset when they end).",
                                             min=0, search=lambda r: int(10 ** r.uniform(0, 4)))},
    "Fish": {"meta_lr": HP(0.5, "Meta step towards the inner-loop weights.", min=0.0, min_open=True,
                           search=lambda r: r.choice([0.05, 0.1, 0.5]))},
    "SelfReg": {},
    "SagNet": {"sag_w_adv": HP(0.1, "Weight of the adversarial style loss.", min=0.0,
                               search=lambda r: 10 ** r.uniform(-2, 1))},
}
_DANN = {
    "lambda": HP(1.0, "Weight of the domain-adversarial loss.", min=0.0, search=lambda r: 10 ** r.uniform(-2, 2)),
    "weight_decay_d": HP(0.0, "Discriminator weight decay.", min=0.0, search=lambda r: 10 ** r.uniform(-6, -2)),
    "d_steps_per_g_step": HP(1, "Discriminator steps per generator step.", min=1,
                             search=lambda r: int(2 ** r.uniform(0, 3))),
    "grad_penalty": HP(0.0, "Gradient penalty on the discriminator input.", min=0.0,
                       search=lambda r: 10 ** r.uniform(-2, 1)),
    "beta1": HP(0.5, "Adam beta1 of both optimizers.", min=0.0, max=1.0, search=lambda r: r.choice([0.0, 0.5])),
    "mlp_width": HP(256, "Discriminator width.", min=1, search=lambda r: int(2 ** r.uniform(6, 10))),
    "mlp_depth": HP(3, "Discriminator depth.", min=2, search=lambda r: int(r.choice([3, 4, 5]))),
    "mlp_dropout": HP(0.0, "Discriminator dropout.", min=0.0, max=1.0, search=lambda r: r.choice([0.0, 0.1, 0.5])),
}
ALGORITHM_HPARAMS["DANN"] = dict(_DANN)
ALGORITHM_HPARAMS["CDANN"] = dict(_DANN)

SWAD_HPARAMS = {
    "swad_n_converge": HP(3, "SWAD: converge-detector window (evaluations).", min=1, search=lambda r: 3),
    "swad_n_tolerance": HP(6, "SWAD: loss-minimum smoothing window (evaluations).", min=1, search=lambda r: 6),
    "swad_tolerance_ratio": HP(0.3, "SWAD: a loss this much above the valley's ends it.", min=0.0,
                               search=lambda r: 0.3),
    "swad_bn_steps": HP(500, "SWAD: steps re-estimating BatchNorm statistics of the averaged weights.", min=0,
                        search=lambda r: 500),
}


def _shared(hclass: str, algorithm: str, pretrained: bool) -> dict[str, HP]:
    """DomainBed's unconditional and dataset-dependent blocks, for the regime `hclass`."""
    if hclass not in HPARAM_CLASSES:
        raise ValueError(f"unknown hyper-parameter class {hclass!r}")
    small = hclass == "mnist-cnn"
    small_lr, large_lr = (lambda r: 10 ** r.uniform(-4.5, -2.5)), (lambda r: 10 ** r.uniform(-5, -3.5))
    hp: dict[str, HP] = {
        "data_augmentation": HP(True, "DomainBed's training augmentation of image folders (digits never: "
                                      "see --augment).", search=lambda r: True),
        # DomainBed draws resnet_dropout for every dataset, but its MNIST CNN has no dropout to apply it to.
        "resnet_dropout": HP(0.0, "Dropout on the backbone's features.", min=0.0, max=1.0,
                             search=(lambda r: 0.0) if small else (lambda r: r.choice([0.0, 0.1, 0.5]))),
        "class_balanced": HP(False, "Sample classes with equal weight.", search=lambda r: False),
        "nonlinear_classifier": HP(False, "An MLP head instead of a linear one.", search=lambda r: bool(r.choice([False, False]))),
        "freeze_bn": HP(pretrained, "Keep BatchNorm in eval mode while training (DomainBed's ResNet does).",
                        search=lambda r, d=pretrained: d),
        "lr": HP(1e-3 if small else 5e-5, "Adam learning rate.", min=0.0, min_open=True,
                 search=small_lr if small else large_lr),
        "weight_decay": HP(0.0, "Adam weight decay.", min=0.0,
                           search=(lambda r: 0.0) if small else (lambda r: 10 ** r.uniform(-6, -2))),
        "batch_size": HP(64 if small else 32, "Images per training environment per step.", min=2,
                         search=(lambda r: int(2 ** r.uniform(3, 9))) if small else (lambda r: int(2 ** r.uniform(3, 5.5)))),
    }
    if algorithm in ("DANN", "CDANN"):
        hp["lr_g"] = HP(1e-3 if small else 5e-5, "Generator learning rate.", min=0.0, min_open=True,
                        search=small_lr if small else large_lr)
        hp["lr_d"] = HP(1e-3 if small else 5e-5, "Discriminator learning rate.", min=0.0, min_open=True,
                        search=small_lr if small else large_lr)
        hp["weight_decay_g"] = HP(0.0, "Generator weight decay.", min=0.0,
                                  search=(lambda r: 0.0) if small else (lambda r: 10 ** r.uniform(-6, -2)))
    return hp


def declared(algorithm: str, hclass: str = "resnet", pretrained: bool = False, swad: bool = False) -> dict[str, HP]:
    """Every hyper-parameter `algorithm` takes, with its default for the regime `hclass` (the names and
    types are the same in every regime: only defaults and search ranges differ)."""
    hp = {**ALGORITHM_HPARAMS[algorithm], **_shared(hclass, algorithm, pretrained)}
    if swad:
        hp.update(SWAD_HPARAMS)
    return hp


def default_hparams(algorithm: str, hclass: str, pretrained: bool = False, swad: bool = False) -> dict[str, Any]:
    return {k: v.default for k, v in declared(algorithm, hclass, pretrained, swad).items()}


def random_hparams(algorithm: str, hclass: str, seed: int, pretrained: bool = False,
                   swad: bool = False) -> dict[str, Any]:
    """DomainBed's random_hparams: each drawn from RandomState(seed_hash(seed, name))."""
    out = {}
    for name, hp in declared(algorithm, hclass, pretrained, swad).items():
        value = hp.search(np.random.RandomState(seed_hash(seed, name))) if hp.search else hp.default
        out[name] = value.item() if isinstance(value, np.generic) else value
    return out


def hparams_for(algorithm: str, hclass: str, hparams_seed: int, trial_seed: int, pretrained: bool = False,
                swad: bool = False) -> dict[str, Any]:
    """train.py: seed 0 -> defaults; else random_hparams(seed_hash(hparams_seed, trial_seed))."""
    if hparams_seed == 0:
        return default_hparams(algorithm, hclass, pretrained, swad)
    return random_hparams(algorithm, hclass, seed_hash(hparams_seed, trial_seed), pretrained, swad)
