"""Hyper-parameters of every CL strategy, in one table (as the DG algorithms' are, in dg/hparams.py).

Each is an `HP`: default, type, allowed values, help, and the toy value a `--smoke` run takes; `--hp
key=value` and a recipe's `cl.hp` are checked against it, and `augur cl --list` prints it. The defaults are the cited implementations' (the strategy
docstrings in strategies.py name the file and lines); the variants they allow are named values.
"""

from __future__ import annotations

from ...core.settings import HP

STRATEGY_HPARAMS: dict[str, dict[str, HP]] = {
    "naive": {},
    "replay": {
        "memory": HP(200, "Exemplars kept, over all seen classes.", min=1),
        "selection": HP("random", "How exemplars of a new class are chosen.", choices=("random", "herding")),
    },
    "lwf": {
        "loss": HP("pycil", "pycil: CE on the new classes' logits + alpha * PyCIL's KD; kl: CE on every seen "
                            "class + alpha * KL * T^2.", choices=("pycil", "kl")),
        "alpha": HP(3.0, "Weight of the distillation loss (PyCIL's lamda).", min=0.0),
        "temperature": HP(2.0, "Distillation temperature.", min=0.0, min_open=True),
    },
    "icarl": {
        "memory": HP(200, "Exemplars kept, over all seen classes.", min=1),
        "loss": HP("bce", "bce: the original binary cross-entropy; ce: PyCIL's cross-entropy + KD(T); kl: "
                          "cross-entropy + alpha * KL * T^2.", choices=("bce", "ce", "kl")),
        "alpha": HP(1.0, "Distillation weight (loss=ce, kl; PyCIL's is 1).", min=0.0),
        "temperature": HP(2.0, "Distillation temperature (loss=ce, kl).", min=0.0, min_open=True),
    },
    "ewc": {
        "lambda": HP(10.0, "Penalty weight (Mammoth's e_lambda; 10 is its best configuration for seq-cifar10).",
                     min=0.0),
        "gamma": HP(1.0, "Decay of the old Fisher at each task (1: the Fishers summed).", min=0.0, max=1.0),
        "fisher": HP("mammoth", "mammoth: squared gradients of log p(y|x) weighted by p(y|x), over len(loader) x "
                                "batch size, penalty lambda; empirical: their plain mean, penalty lambda / 2.",
                     choices=("mammoth", "empirical")),
        "fisher_samples": HP(0, "Training samples of the task the Fisher is estimated on (0: all of them, as "
                                "Mammoth; else a shuffled subset).", min=0, smoke=lambda v: min(v or 16, 16)),
    },
    "ncm": {},
    "ranpac": {
        "M": HP(10000, "Random projection size (0: no projection, ridge on the features).", min=0,
                smoke=lambda v: min(v, 64)),
    },
    "fsa": {
        "head": HP("ranpac", "The head after the first session.", choices=("ranpac", "ncm")),
        "M": HP(10000, "Random projection size of the ranpac head.", min=0, smoke=lambda v: min(v, 64)),
        "petl": HP("auto", "What the first session trains. adapter: RanPAC's AdaptFormer adapters in a frozen ViT's "
                           "blocks; ssf: its SSF scale-and-shift after each op; vpt: its deep visual prompts; none: "
                           "the backbone's own weights (every one, or LoRA adapters with --lora); auto: adapter on a "
                           "ViT without --lora, else none.", choices=("auto", "adapter", "ssf", "vpt", "none")),
        "adapter_dim": HP(64, "The adapters' bottleneck (RanPAC's ffn_num).", min=1, max=4096),
        "vpt_tokens": HP(5, "Prompt tokens per block with petl=vpt (RanPAC's Prompt_Token_num).", min=1, max=1024),
        "optimizer": HP("auto", "sgd: RanPAC's first session (SGD, momentum 0.9, the learning rate annealed to 0 "
                                "by a cosine over --epochs, a cosine-similarity head with a learnt scale); adamw: "
                                "the run's --lr and --weight-decay, constant, a linear head; auto: sgd when the "
                                "backbone's own weights are frozen (adapter, ssf, vpt, --lora), else adamw.",
                        choices=("auto", "sgd", "adamw")),
        "sgd_lr": HP(0.01, "SGD learning rate (RanPAC's body_lr and head_lr).", min=0.0, min_open=True, max=10.0),
        "sgd_weight_decay": HP(5e-4, "SGD weight decay (RanPAC's).", min=0.0, max=1.0),
    },
    "der": {
        "memory": HP(200, "Buffer size.", min=1),
        "alpha": HP(0.3, "Weight of the logit MSE.", min=0.0),
    },
    "derpp": {
        "memory": HP(200, "Buffer size.", min=1),
        "alpha": HP(0.1, "Weight of the logit MSE.", min=0.0),
        "beta": HP(0.5, "Weight of the buffered-label cross-entropy.", min=0.0),
    },
    "gdumb": {
        "memory": HP(200, "Memory size.", min=1),
    },
}


def strategy_hparams(name: str) -> dict[str, HP]:
    """The hyper-parameters of strategy `name` (or one of its aliases)."""
    from .strategies import STRATEGIES

    return STRATEGY_HPARAMS[STRATEGIES.canonical(name)]
