"""RanPAC's first-session adapters: AdaptFormer's parallel bottleneck adapters in a frozen ViT's blocks.

Followed line for line from RanPAC's petl/vision_transformer_adapter.py (RanPAC/RanPAC, `Adapter` and
`Block.forward`) with the configuration its inc_net.py builds for every `*_adapter` backbone: in each
block, beside the MLP, `0.1 * up(dropout(relu(down(x))))` of the block's residual stream x (before
norm2, no adapter layer norm), bottleneck 64, dropout 0.1, the "lora" initialisation (down:
kaiming-uniform with a = sqrt(5), up and both biases zero, so an untrained adapter changes nothing).

Written here because no library has it: peft's adapters are LoRA-family reparametrisations of a
layer's weight, not a parallel MLP branch. timm's Block computes `x + ls2(mlp(norm2(x)))`; the MLP is
replaced by one that takes x, applies norm2 itself and adds the adapter, and norm2 by an identity, so
the block computes RanPAC's `x + mlp(norm2(x)) + adapter(x)` exactly (layer scale and drop path are
identities in the ViTs Augur builds).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..core.errors import AugurError

SCALE = 0.1  # RanPAC's ffn_adapter_scalar
DROPOUT = 0.1  # Block's Adapter(dropout=0.1)


class Adapter(nn.Module):
    """RanPAC's `Adapter` with adapter_layernorm_option="none", init_option="lora", add_residual=False."""

    def __init__(self, d_model: int, bottleneck: int, scale: float = SCALE, dropout: float = DROPOUT):
        super().__init__()
        self.scale, self.dropout = scale, dropout
        self.down_proj = nn.Linear(d_model, bottleneck)
        self.up_proj = nn.Linear(bottleneck, d_model)
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.down_proj.weight, a=math.sqrt(5))
            nn.init.zeros_(self.up_proj.weight)
            nn.init.zeros_(self.down_proj.bias)
            nn.init.zeros_(self.up_proj.bias)

    def forward(self, x):
        down = nn.functional.dropout(torch.relu(self.down_proj(x)), p=self.dropout, training=self.training)
        return self.up_proj(down) * self.scale


class ParallelAdapted(nn.Module):
    """A block's MLP with its pre-norm and a parallel adapter: mlp(norm(x)) + adapter(x)."""

    def __init__(self, norm: nn.Module, mlp: nn.Module, adapter: Adapter):
        super().__init__()
        self.norm, self.mlp, self.adapter = norm, mlp, adapter

    def forward(self, x):
        return self.mlp(self.norm(x)) + self.adapter(x)


def add_adapters(model: nn.Module, bottleneck: int = 64) -> nn.Module:
    """Put an adapter in every block of the timm ViT `model` (in place) and freeze everything else."""
    blocks = getattr(model, "blocks", None)
    if blocks is None or not all(hasattr(b, "mlp") and hasattr(b, "norm2") for b in blocks):
        raise AugurError(f"RanPAC's adapters sit in a vision transformer's blocks; a {type(model).__name__} has none "
                         "(use --hp petl=none, with or without --lora)")
    for p in model.parameters():
        p.requires_grad_(False)
    for b in blocks:
        if not all(isinstance(m, nn.Identity) for m in (b.ls2, b.drop_path2)):
            raise AugurError("this ViT has layer scale or drop path in its blocks: RanPAC's adapter is defined "
                             "without them")
        d = b.norm2.normalized_shape[0]
        b.mlp = ParallelAdapted(b.norm2, b.mlp, Adapter(d, bottleneck))
        b.norm2 = nn.Identity()
    return model
