"""The settings of `augur render` (one source: CLI options, recipe keys, validation)."""

from __future__ import annotations

from dataclasses import dataclass

from ...core.device import DEVICES, PRECISIONS
from ...core.settings import SettingError, ShowsProgress, quiet_setting, seed_setting, setting, threads_setting


def _backends():
    from .backends import BACKENDS

    return BACKENDS.names()


@dataclass
class RenderConfig(ShowsProgress):
    model: str = setting("auto", "A diffusers/onnx card or a pipeline folder; auto: a real diffusion model you "
                                 "imported, else the built-in tiny-lcm (which draws noise).", metavar="CARD|DIR")
    backend: str = setting("torch", "Inference backend.", choices=_backends)
    device: str = setting("auto", "auto (CUDA when a GPU is visible), cpu or cuda.", choices=DEVICES)
    precision: str = setting("auto", "auto (fp16 on CUDA, fp32 on CPU), fp32, fp16 or bf16.", choices=PRECISIONS,
                             hidden_flags=("--dtype",))
    steps: int | None = setting(None, "Denoising steps (default: the card's).", min=1, max=1000)
    guidance: float | None = setting(None, "Guidance scale (default: the card's).", min=0.0, max=100.0)
    size: int | None = setting(None, "Image side in pixels (default: the card's).", min=8, max=4096, multiple_of=8)
    batch_size: int = setting(4, "Images per pipeline call. On a CPU every image is computed alone, so it does not "
                                 "change the images; on a GPU it does (recorded; a resume must keep it).", min=1,
                              max=1024)
    images_per_prompt: int = setting(1, "Images per prompt row, each with its own seed.", min=1, max=100000)
    seed: int = seed_setting()
    shard: str | None = setting(None, "i/n: render only this shard of the images (merge with `augur render "
                                      "merge`).", recipe=False, metavar="I/N")
    negative_prompt: str | None = setting(None, "For pipelines that take one (not LCM).")
    init_images: str | None = setting(None, "Real images that guide the rendering (image-to-image): a "
                                            "DomainBed-layout folder, or digits. Each image starts from a seeded "
                                            "choice among the guide images of its prompt row's class; in a recipe, "
                                            "dg.data names the dg section's data.", metavar="DATA")
    init_domains: list[str] | None = setting(None, "The guide folder's domains that may guide, comma-separated "
                                                   "(default: every domain but a test split named 'test').")
    strength: list[float] | None = setting(None, "How far each guided image moves from its guide, comma-separated "
                                                 "(0 < s <= 1; 1 ignores the guide): every guided image is drawn at "
                                                 "each strength (default: the card's, else 0.5).", min=0.0,
                                           min_open=True, max=1.0)
    safety_checker: bool = setting(False, "Load the pipeline's own safety checker, which blacks out images it flags "
                                          "(off by default, as in the Premonition notebook; torch; recorded).",
                                   is_flag=True)
    attention_slicing: bool = setting(False, "Less memory, a little slower (torch).", is_flag=True)
    vae_slicing: bool = setting(False, "Decode images one by one (torch).", is_flag=True)
    vae_tiling: bool = setting(False, "Decode large images tile by tile (torch).", is_flag=True)
    cpu_offload: bool = setting(False, "Keep only the running component on the GPU "
                                       "(enable_model_cpu_offload; torch, CUDA).", is_flag=True)
    tiny_vae: str | None = setting(None, "An AutoencoderTiny card or folder (e.g. taesd) for faster decoding "
                                         "(torch).", metavar="CARD|DIR")
    channels_last: bool = setting(False, "Convolutions in channels-last memory layout (torch; measured on a CPU: "
                                         "10% faster with bf16, no gain in fp32; see docs/benchmarks.md).")
    compile: bool = setting(False, "torch.compile the UNet and the VAE decoder (inductor; minutes of compiling "
                                   "at start, then faster; needs a C++ compiler on a CPU).")
    compile_mode: str = setting("default", "torch.compile's mode with --compile (reduce-overhead and max-autotune use "
                                           "CUDA graphs on a GPU).",
                                choices=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"))
    fuse_qkv: bool = setting(False, "Fuse the attention's query, key and value projections into one matrix "
                                    "multiplication (torch; UNet and VAE; other float rounding).")
    writers: int | None = setting(None, "Threads that encode, hash and write the PNGs while the next batch renders "
                                        "(default: up to 8 on a GPU, 2 on a CPU).", min=1, max=64, none_word="auto",
                                  recipe=False)
    threads: int | None = threads_setting('every manifest row')
    quiet: bool = quiet_setting()

    def shard_tuple(self) -> tuple[int, int]:
        return parse_shard(self.shard)

    def check(self) -> None:
        parse_shard(self.shard)
        if self.init_images is None and (self.strength or self.init_domains):
            # no option is a silent no-op: strengths and guide domains mean nothing without guide images
            raise SettingError("strength" if self.strength else "init_domains",
                               "applies to guided rendering: give --init-images DATA too")
        if self.strength and len(set(self.strength)) < len(self.strength):
            raise SettingError("strength", f"{self.strength} names one strength twice")
        from .guides import TEST_SPLIT

        if self.init_domains and TEST_SPLIT in self.init_domains:
            raise SettingError("init_domains", f"'{TEST_SPLIT}' is a test split: guide images come from training "
                                               "data only")
        from .backends import BACKENDS

        levers = BACKENDS.get(self.backend).levers
        if any(getattr(self, k) for k in ("tiny_vae", "attention_slicing", "vae_slicing", "vae_tiling", "cpu_offload",
                                           "compile", "fuse_qkv") if k not in levers):
            raise SettingError("backend", "--tiny-vae, the slicing/tiling switches, --compile, --fuse-qkv and "
                                          "--cpu-offload apply to the torch backend only")


def parse_shard(text: str | None) -> tuple[int, int]:
    if not text:
        return (0, 1)
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise SettingError("shard", f"must look like 0/4, got '{text}'") from None
    if not (n >= 1 and 0 <= i < n):
        raise SettingError("shard", f"must be i/n with 0 <= i < n, got {i}/{n}")
    return (i, n)
