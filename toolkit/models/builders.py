"""Builders of local model folders: the built-in render model and the tiny random-weight stand-ins of real
cards (their architectures in ARCHS). Pure construction: nothing here registers a card or touches the
store (store.py calls build_for_card; tiny.py registers stand-ins)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ..core.errors import AugurError

TINY_NAME = "tiny-lcm"
SEED = 0

# The hub folders' structures. scheduler: class and the config keys the real folder sets; unet: the
# architecture's distinguishing switches; text: the text encoder's activation; vae: "kl" or "tiny";
# safety: the folder ships safety_checker + feature_extractor; variant: the fp16 weight files it also ships.
ARCHS: dict[str, dict[str, Any]] = {
    "lcm-plain": {"pipeline": "LatentConsistencyModelPipeline", "unet": {"time_cond_proj_dim": 32},
                  "scheduler": ("LCMScheduler", {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                                                 "timestep_spacing": "leading", "original_inference_steps": 50}),
                  "text": "quick_gelu", "vae": "kl", "safety": False, "variant": None},
    "lcm-sd15": {"pipeline": "LatentConsistencyModelPipeline", "unet": {"time_cond_proj_dim": 32},
                 "scheduler": ("LCMScheduler", {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                                                "timestep_spacing": "leading", "original_inference_steps": 50,
                                                "set_alpha_to_one": True, "steps_offset": 1}),
                 "text": "quick_gelu", "vae": "kl", "safety": True, "variant": None},
    "sd15": {"pipeline": "StableDiffusionPipeline", "unet": {},
             "scheduler": ("PNDMScheduler", {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                                             "skip_prk_steps": True, "set_alpha_to_one": False, "steps_offset": 1}),
             "text": "quick_gelu", "vae": "kl", "safety": True, "variant": "fp16"},
    "sd14-256": {"pipeline": "StableDiffusionPipeline", "unet": {},
                 "scheduler": ("PNDMScheduler", {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                                                 "skip_prk_steps": True, "set_alpha_to_one": False, "steps_offset": 1}),
                 "text": "quick_gelu", "vae": "kl", "safety": True, "variant": None},
    "sd21-turbo": {"pipeline": "StableDiffusionPipeline", "unet": {"use_linear_projection": True},
                   "scheduler": ("EulerDiscreteScheduler", {"beta_start": 0.00085, "beta_end": 0.012,
                                                            "beta_schedule": "scaled_linear", "timestep_spacing": "trailing",
                                                            "steps_offset": 1}),
                   "text": "gelu", "vae": "kl", "safety": False, "variant": "fp16"},
    "sdxs": {"pipeline": "StableDiffusionPipeline", "unet": {},
             "scheduler": ("DDPMScheduler", {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                                             "steps_offset": 1}),
             "text": "quick_gelu", "vae": "tiny", "safety": False, "variant": None},
    # SDXL's layout: two CLIP text encoders (the second with a projection) and tokenizers, a UNet conditioned
    # on both (cross-attention on their concatenation, "text_time" added embeddings of the pooled text and the
    # six size/crop numbers)
    "sdxl-turbo": {"pipeline": "StableDiffusionXLPipeline", "family": "sdxl",
                   "unet": {"addition_embed_type": "text_time", "addition_time_embed_dim": 8,
                            "projection_class_embeddings_input_dim": 6 * 8 + 32, "cross_attention_dim": 64,
                            "use_linear_projection": True},
                   "scheduler": ("EulerAncestralDiscreteScheduler", {
                       "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                       "timestep_spacing": "trailing", "steps_offset": 1}),
                   "text": "quick_gelu", "vae": "kl", "safety": False, "variant": "fp16"},
    # PixArt-alpha's layout: a DiT (`transformer`, PixArtTransformer2DModel, adaLN-single) conditioned on T5
    # (T5EncoderModel + a sentencepiece T5Tokenizer), DPM-Solver++; sample_size 32 is one the pipeline's
    # resolution binning knows (its 256 px table), and an 8x VAE keeps that cheap
    "pixart-alpha": {"pipeline": "PixArtAlphaPipeline", "family": "pixart", "unet": None,
                     "scheduler": ("DPMSolverMultistepScheduler", {
                         "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear", "solver_order": 2,
                         "algorithm_type": "dpmsolver++", "prediction_type": "epsilon"}),
                     "text": "t5", "vae": "kl8", "safety": False, "variant": None},
}


def write_tokenizer(folder: Path) -> None:
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


def _unet(spec: dict[str, Any]):
    from diffusers import UNet2DConditionModel

    config = dict(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32)
    return UNet2DConditionModel(**{**config, **spec})


def _vae(kind: str):
    from diffusers import AutoencoderKL, AutoencoderTiny

    if kind == "tiny":
        return AutoencoderTiny(encoder_block_out_channels=(16, 16), decoder_block_out_channels=(16, 16),
                               num_encoder_blocks=(1, 1), num_decoder_blocks=(1, 1), latent_channels=4)
    blocks = 4 if kind == "kl8" else 2  # kl8: the real VAEs' 8x downsampling (three downsamplers)
    return AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8,) * blocks if blocks == 4 else (32, 64),
                         latent_channels=4, norm_num_groups=8 if blocks == 4 else 32,
                         down_block_types=("DownEncoderBlock2D",) * blocks, up_block_types=("UpDecoderBlock2D",) * blocks,
                         sample_size=32)


def _clip_text(tokenizer, act: str, projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, projection_dim=32, hidden_act=act, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def write_t5_tokenizer(folder: Path) -> None:
    """A character-level sentencepiece model in T5's id layout (pad 0, eos 1, unk 2), saved as the hub's
    T5Tokenizer folder (spiece.model + its configs). Trained on one thread from a fixed text: the same bytes
    every time."""
    import io
    import string

    import sentencepiece as spm
    from transformers import T5Tokenizer

    text = [" ".join(string.ascii_lowercase), " ".join(string.ascii_uppercase), " ".join(string.digits),
            " ".join(string.punctuation)] * 4
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text), model_writer=model, model_type="char", vocab_size=100,
                                   pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False, num_threads=1,
                                   minloglevel=2)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spiece.model").write_bytes(model.getvalue())
    T5Tokenizer(str(folder / "spiece.model"), legacy=False, model_max_length=512).save_pretrained(str(folder))


def _components(spec: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """The text side and the denoiser of a tiny pipeline of `spec`'s family (seeded by the caller)."""
    family = spec.get("family", "sd")
    if family == "pixart":
        from diffusers import PixArtTransformer2DModel
        from transformers import T5Config, T5EncoderModel, T5Tokenizer

        write_t5_tokenizer(tmp / "tokenizer")
        tokenizer = T5Tokenizer.from_pretrained(str(tmp / "tokenizer"))
        text_encoder = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                               num_heads=4, pad_token_id=0, eos_token_id=1))
        transformer = PixArtTransformer2DModel(
            sample_size=32, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=3,
            caption_channels=32, in_channels=4, cross_attention_dim=24, out_channels=8, attention_bias=True,
            activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
            norm_elementwise_affine=False, norm_eps=1e-6)
        return {"tokenizer": tokenizer, "text_encoder": text_encoder, "transformer": transformer, "vae": _vae(spec["vae"])}
    from transformers import CLIPTokenizer

    write_tokenizer(tmp / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(str(tmp / "tokenizer"))
    if family == "sdxl":
        write_tokenizer(tmp / "tokenizer_2")
    # drawn in this order from the caller's seed (the first stand-ins' order: their bytes stay the same)
    parts = {"tokenizer": tokenizer, "unet": _unet(spec["unet"]), "vae": _vae(spec["vae"]),
             "text_encoder": _clip_text(tokenizer, spec["text"])}
    if family == "sdxl":
        parts["tokenizer_2"] = CLIPTokenizer.from_pretrained(str(tmp / "tokenizer_2"))
        parts["text_encoder_2"] = _clip_text(parts["tokenizer_2"], spec["text"], projection=True)
    else:
        safety, features = _safety() if spec["safety"] else (None, None)
        parts.update(safety_checker=safety, feature_extractor=features, requires_safety_checker=spec["safety"])
    return parts


def _safety():
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    config = CLIPConfig(text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                     "num_attention_heads": 4, "projection_dim": 32},
                        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                       "num_attention_heads": 4, "image_size": 32, "patch_size": 8, "projection_dim": 32},
                        projection_dim=32)
    return StableDiffusionSafetyChecker(config), CLIPImageProcessor(crop_size=32, size={"shortest_edge": 32})


def build_pipeline(arch: str, dest: Path, seed: int = SEED, weights: str = "safetensors") -> Path:
    """A random-weight pipeline of `arch` (see ARCHS) saved with save_pretrained into `dest` (atomically).
    weights="bin": as a folder from before safetensors, every weight a pickled `.bin` (miniSD's layout)."""
    import diffusers
    import torch

    spec = ARCHS[arch]
    dest = Path(dest)
    tmp = dest.parent / f".{dest.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    torch.manual_seed(seed)
    parts = _components(spec, tmp)
    sched_cls, sched_cfg = spec["scheduler"]
    pipe = getattr(diffusers, spec["pipeline"])(scheduler=getattr(diffusers, sched_cls)(**sched_cfg), **parts)
    pipe.save_pretrained(str(tmp), safe_serialization=weights == "safetensors")
    if spec["variant"]:
        # the hub folder ships half-precision copies beside the full ones (what `variant` selects)
        pipe.to(torch.float16).save_pretrained(str(tmp), safe_serialization=True, variant=spec["variant"])
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def build_lora(arch: str, dest: Path, seed: int = SEED) -> Path:
    """An LCM-LoRA-style file for a tiny `arch` UNet: random low-rank updates of the attention, projection,
    feed-forward and ResNet layers, saved in the Kohya key format the real file uses
    (lora_unet_up_blocks_2_attentions_0_proj_in.lora_up.weight, .lora_down.weight, .alpha)."""
    import torch
    from diffusers.utils import convert_state_dict_to_kohya
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    from ..core.files import atomic_write

    torch.manual_seed(seed)
    unet = _unet(ARCHS[arch]["unet"])
    torch.manual_seed(seed + 1)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                target_modules=["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out",
                                                "ff.net.0.proj", "ff.net.2", "conv1", "conv2", "time_emb_proj"]))
    peft_state = {f"unet.{k}": v for k, v in get_peft_model_state_dict(unet).items()}
    kohya = {k: v.contiguous() for k, v in convert_state_dict_to_kohya(peft_state).items()}
    dest = Path(dest)
    with atomic_write(dest) as tmp:
        save_file(kohya, str(tmp))
    return dest


def build_autoencoder_tiny(dest: Path, seed: int = SEED) -> Path:
    """TAESD's layout: config.json + diffusion_pytorch_model.safetensors of an AutoencoderTiny."""
    import torch

    torch.manual_seed(seed)
    dest = Path(dest)
    tmp = dest.parent / f".{dest.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    _vae("tiny").save_pretrained(str(tmp), safe_serialization=True)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def build_backbone(arch: str, dest: Path, seed: int = SEED) -> Path:
    """Random weights of a timm architecture in timm's hub layout (model.safetensors + config.json)."""
    import timm
    import torch
    from safetensors.torch import save_file

    from ..learn.backbones import family

    torch.manual_seed(seed)
    model = timm.create_model(family(arch).timm_name, pretrained=False)
    dest = Path(dest)
    tmp = dest.parent / f".{dest.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
    (tmp / "config.json").write_text(json.dumps({"architecture": family(arch).timm_name, "num_classes": 1000,
                                                 "pretrained_cfg": dict(model.pretrained_cfg)}, default=str),
                                     encoding="utf-8")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


BUILDERS = {TINY_NAME: lambda dest: build_pipeline("lcm-plain", dest)}


def build_for_card(card, dest: Path) -> Path:
    """Build the local copy of a built-in card or of a tiny stand-in card."""
    if "builtin" in card.source and card.source["builtin"] in BUILDERS:
        return BUILDERS[card.source["builtin"]](dest)
    if "tiny_of" in card.source:
        return _build_tiny(card, dest)
    raise AugurError(f"model '{card.name}' has no local builder")


def _build_tiny(card, dest: Path) -> Path:
    kind, spec = card.kind, card.extra.get("tiny", {})
    if kind == "diffusers":
        return build_pipeline(spec["arch"], dest, weights=spec.get("weights", "safetensors"))
    if kind == "lora":
        dest.parent.mkdir(parents=True, exist_ok=True)
        return build_lora(spec["arch"], dest)
    if kind == "autoencoder-tiny":
        return build_autoencoder_tiny(dest)
    if kind == "backbone":
        return build_backbone(card.extra["backbone"], dest)
    if kind == "clip":
        return build_clip(dest)
    raise AugurError(f"model '{card.name}': no tiny builder for kind {kind}")


def build_clip(dest: Path) -> Path:
    """A random-weight CLIPModel + CLIPProcessor at tiny dimensions, in the hub folder's layout (config.json,
    model.safetensors, preprocessor_config.json, the tokenizer files)."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    tmp = dest.parent / f".{dest.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    write_tokenizer(tmp)
    tok = CLIPTokenizer.from_pretrained(str(tmp))
    torch.manual_seed(SEED)
    config = CLIPConfig(text_config={"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64,
                                     "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 77,
                                     "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
                                     "pad_token_id": tok.pad_token_id},
                        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                                       "num_attention_heads": 4, "image_size": 32, "patch_size": 8},
                        projection_dim=16)
    CLIPModel(config).eval().save_pretrained(str(tmp), safe_serialization=True)
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=images, tokenizer=tok).save_pretrained(str(tmp))
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest
