"""RanPAC's first-session parameter-efficient modules in a frozen timm ViT: AdaptFormer adapters, SSF, VPT.

Adapters (`add_adapters`):

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

SSF (`add_ssf`, Lian et al. 2022), from RanPAC's petl/vision_transformer_ssf.py: a learnt per-channel scale
and shift (`ssf_ada`: x * scale + shift; scale ~ N(1, 0.02), shift ~ N(0, 0.02)) after the patch projection,
after each block's norm1, qkv, attention projection, norm2, fc1 and fc2, and after the final norm. Each op is
wrapped as op -> scale-shift, which is where RanPAC's forward functions apply them.

VPT (`add_vpt`, Jia et al. 2022), from RanPAC's petl/vpt.py as its inc_net.py builds it (VPT_type "Deep",
Prompt_Token_num 5): before each block, that block's own prompt tokens (zeros at the start) are appended
after the class and patch tokens, and removed after the block.
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


# ----------------------------------------------------------------------------- SSF
class ScaleShift(nn.Module):
    """RanPAC's `init_ssf_scale_shift` + `ssf_ada`: over the last dimension, or over channels of an NCHW map."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))
        self.shift = nn.Parameter(torch.zeros(dim))
        nn.init.normal_(self.scale, mean=1, std=.02)
        nn.init.normal_(self.shift, std=.02)

    def forward(self, x):
        if x.shape[-1] == self.scale.shape[0]:
            return x * self.scale + self.shift
        if x.shape[1] == self.scale.shape[0]:
            return x * self.scale.view(1, -1, 1, 1) + self.shift.view(1, -1, 1, 1)
        raise ValueError("the input tensor shape does not match the shape of the scale factor.")


def _ssf_after(module: nn.Module, dim: int) -> nn.Module:
    return nn.Sequential(module, ScaleShift(dim))


def _blocks(model: nn.Module, what: str):
    blocks = getattr(model, "blocks", None)
    if blocks is None or not all(hasattr(b, "attn") and hasattr(b, "mlp") for b in blocks):
        raise AugurError(f"RanPAC's {what} sits in a vision transformer's blocks; a {type(model).__name__} has none "
                         "(use --hp petl=none, with or without --lora)")
    return blocks


def add_ssf(model: nn.Module) -> nn.Module:
    """SSF in the timm ViT `model` (in place), everything else frozen."""
    blocks = _blocks(model, "SSF")
    for p in model.parameters():
        p.requires_grad_(False)
    pe = model.patch_embed
    pe.proj = _ssf_after(pe.proj, pe.proj.out_channels)
    if not isinstance(pe.norm, nn.Identity):
        pe.norm = _ssf_after(pe.norm, pe.proj[0].out_channels)
    for b in blocks:
        dim = b.norm1.normalized_shape[0]
        b.norm1 = _ssf_after(b.norm1, dim)
        b.attn.qkv = _ssf_after(b.attn.qkv, b.attn.qkv.out_features)
        b.attn.proj = _ssf_after(b.attn.proj, b.attn.proj.out_features)
        b.norm2 = _ssf_after(b.norm2, dim)
        b.mlp.fc1 = _ssf_after(b.mlp.fc1, b.mlp.fc1.out_features)
        b.mlp.fc2 = _ssf_after(b.mlp.fc2, b.mlp.fc2.out_features)
    model.norm = _ssf_after(model.norm, model.num_features)
    return model


# ----------------------------------------------------------------------------- VPT
PROMPT_TOKENS = 5  # RanPAC's inc_net.py: Prompt_Token_num=5


class Prompted(nn.Module):
    """VPT-Deep around one block: its prompt tokens appended, the block run, the prompt positions dropped."""

    def __init__(self, block: nn.Module, tokens: int, dim: int):
        super().__init__()
        self.block = block
        self.prompt = nn.Parameter(torch.zeros(1, tokens, dim))

    def forward(self, x):
        n = x.shape[1]
        x = torch.cat((x, self.prompt.expand(x.shape[0], -1, -1)), dim=1)
        return self.block(x)[:, :n]


def add_vpt(model: nn.Module, tokens: int = PROMPT_TOKENS) -> nn.Module:
    """Deep visual prompts in the timm ViT `model` (in place), everything else frozen."""
    blocks = _blocks(model, "VPT")
    for p in model.parameters():
        p.requires_grad_(False)
    for i, b in enumerate(blocks):
        blocks[i] = Prompted(b, tokens, model.embed_dim)
    return model
