"""A tiny random-init Latent Consistency Model pipeline in the real diffusers folder layout.

It draws noise, but it is a real diffusers pipeline (UNet with the LCM guidance embedding, VAE, CLIP
text encoder and tokenizer, LCM scheduler) saved with `save_pretrained`: every code path of the render
stage, torch and ONNX, runs on it in seconds on a CPU, with no download. Built deterministically.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

TINY_NAME = "tiny-lcm"


def _write_tokenizer(folder: Path) -> None:
    """A byte-level CLIP BPE vocabulary with no merges: every word is spelled out byte by byte."""
    from transformers import CLIPTokenizer
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)
    tok.save_pretrained(str(folder))


def build_tiny_lcm(dest: Path, seed: int = 0) -> Path:
    import torch
    from diffusers import AutoencoderKL, LatentConsistencyModelPipeline, LCMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    dest = Path(dest)
    tmp = dest.parent / f".{dest.name}.building"
    shutil.rmtree(tmp, ignore_errors=True)
    _write_tokenizer(tmp / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(str(tmp / "tokenizer"))
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32, time_cond_proj_dim=32)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(32, 64), latent_channels=4, norm_num_groups=32,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, sample_size=32)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, projection_dim=32, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    scheduler = LCMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                             timestep_spacing="leading", original_inference_steps=50)
    pipe = LatentConsistencyModelPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                          scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False)
    pipe.save_pretrained(str(tmp), safe_serialization=True)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


BUILDERS = {TINY_NAME: build_tiny_lcm}
