"""Tiny random SD 1.x / SDXL pipelines and writers of their single-file checkpoints.

The models keep every structural trait the converters and loaders care about (cross-attention
and plain levels, two resnets per level, a VAE mid-block attention, SDXL's two text encoders of
different widths with a non-square text projection, the text_time add-embedding) at a size that
runs a 2-step 32x32 generation in well under a second on CPU. Text encoders use the real 49408-token
vocabulary so the bundled tokenizer drives them.

Fields that tensor shapes cannot reveal and that differ from the real models' conventions are
written to the checkpoint's `lorastudio.config` metadata, exactly what the config inference reads.
"""

from __future__ import annotations

import contextlib
import inspect
import json
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch

from lorastudio.core.atomic import atomic_path
from lorastudio.models.formats.config_dir import CLIP_VOCAB_DIR
from lorastudio.models.formats.sd_checkpoint import sd1_checkpoint_from_diffusers, sdxl_checkpoint_from_diffusers
from lorastudio.models.formats.sd_config_inference import (
    CONFIG_METADATA_KEY,
    SD1_SCHEDULER,
    SDXL_SCHEDULER,
    infer_sd1_configs,
    infer_sdxl_configs,
)

__all__ = [
    "tiny_sd1_pipeline",
    "tiny_sd1_inpainting_pipeline",
    "tiny_sdxl_inpainting_pipeline",
    "tiny_sdxl_pipeline",
    "save_sd1_single_file",
    "save_sdxl_single_file",
    "tiny_clip_tokenizer",
    "config_overrides",
]

# UNet: 2 levels, SD 1.x order (attention at high resolution) and SDXL order (attention low).
_SD1_UNET: dict[str, Any] = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64),
    layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=4,
    norm_num_groups=8,
    upcast_attention=None,
)
_SDXL_UNET: dict[str, Any] = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2),
    attention_head_dim=(2, 4),
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=6 * 8 + 24,  # 6 size/crop embeddings + te2 projection
    cross_attention_dim=32 + 48,  # te1 and te2 hidden states are concatenated
    norm_num_groups=16,
    upcast_attention=None,
)
_VAE: dict[str, Any] = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    block_out_channels=(32, 64),
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    latent_channels=4,
    layers_per_block=1,
)
TINY_CLIP: dict[str, Any] = dict(
    vocab_size=49408,
    max_position_embeddings=77,
    hidden_size=32,
    intermediate_size=37,
    num_hidden_layers=2,
    num_attention_heads=4,
    projection_dim=32,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-05,
    bos_token_id=0,
    eos_token_id=2,
    pad_token_id=1,
)
# te2 must differ in width from te1: diffusers' single-file loader tells the SDXL encoders apart by
# the width of their position embeddings.
_CLIP2: dict[str, Any] = {**TINY_CLIP, "hidden_size": 48, "projection_dim": 24, "hidden_act": "gelu"}


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    # fork_rng so that building a tiny model never shifts the caller's random stream
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def tiny_clip_tokenizer(pad_token: str = "<|endoftext|>"):
    from transformers import CLIPTokenizer

    return CLIPTokenizer(
        str(CLIP_VOCAB_DIR / "vocab.json"), str(CLIP_VOCAB_DIR / "merges.txt"), pad_token=pad_token, model_max_length=77
    )


def _vae(seed: int, scaling_factor: float):
    from diffusers import AutoencoderKL

    with _seeded(seed):
        return AutoencoderKL(**_VAE, scaling_factor=scaling_factor).eval()


def _clip(seed: int, cfg: Mapping[str, Any], with_projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    with _seeded(seed):
        return cls(CLIPTextConfig(**cfg)).eval()


def tiny_sd1_pipeline(seed: int = 0):
    """StableDiffusionPipeline with random tiny weights, identical for identical seeds."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    with _seeded(seed):
        unet = UNet2DConditionModel(**_SD1_UNET).eval()
    pipe = StableDiffusionPipeline(
        vae=_vae(seed + 1, 0.18215),
        text_encoder=_clip(seed + 2, TINY_CLIP, with_projection=False),
        tokenizer=tiny_clip_tokenizer("<|endoftext|>"),
        unet=unet,
        scheduler=PNDMScheduler.from_config(SD1_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sd1_inpainting_pipeline(seed: int = 0):
    """The tiny SD 1.x pipeline with an inpainting UNet: 9 input channels (4 latent, 1 mask, 4 masked
    image), as sd-v1-5-inpainting. Its VAE posterior is made (nearly) deterministic, log-variance
    -30 everywhere, so a pipeline that samples the posterior and one that takes its mean agree to
    ~1e-7 (as a trained VAE's small variance makes them nearly agree)."""
    return _with_inpainting_unet(tiny_sd1_pipeline(seed), _SD1_UNET, seed)


def tiny_sdxl_inpainting_pipeline(seed: int = 0):
    """The tiny SDXL pipeline with a 9-channel inpainting UNet (as sd_xl_base_1.0_inpainting), its VAE
    posterior made (nearly) deterministic as in `tiny_sd1_inpainting_pipeline`."""
    return _with_inpainting_unet(tiny_sdxl_pipeline(seed), _SDXL_UNET, seed)


def _with_inpainting_unet(pipe, unet_config: dict, seed: int):
    """`pipe` with a 9-channel UNet of `unet_config`, its VAE posterior made (nearly) deterministic."""
    from diffusers import UNet2DConditionModel

    with _seeded(seed):
        pipe.unet = UNet2DConditionModel(**{**unet_config, "in_channels": 9}).eval()
    pipe.register_modules(unet=pipe.unet)
    latent = pipe.vae.config.latent_channels
    with torch.no_grad():
        pipe.vae.quant_conv.weight[latent:] = 0
        pipe.vae.quant_conv.bias[latent:] = -30.0
    return pipe

def tiny_sdxl_pipeline(seed: int = 0):
    """StableDiffusionXLPipeline with random tiny weights, identical for identical seeds."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    with _seeded(seed):
        unet = UNet2DConditionModel(**_SDXL_UNET).eval()
    pipe = StableDiffusionXLPipeline(
        vae=_vae(seed + 1, 0.13025),
        text_encoder=_clip(seed + 2, TINY_CLIP, with_projection=False),
        text_encoder_2=_clip(seed + 3, _CLIP2, with_projection=True),
        tokenizer=tiny_clip_tokenizer("<|endoftext|>"),
        tokenizer_2=tiny_clip_tokenizer("!"),
        unet=unet,
        scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULER),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_sd1_single_file(pipe, path: str | Path) -> Path:
    """Write `pipe` as an A1111-layout SD 1.x `.safetensors` (plus `lorastudio.config` metadata)."""
    sd = sd1_checkpoint_from_diffusers(pipe.unet.state_dict(), pipe.vae.state_dict(), pipe.text_encoder.state_dict())
    return _save(sd, path, infer_sd1_configs, {"unet": pipe.unet, "vae": pipe.vae, "text_encoder": pipe.text_encoder})


def save_sdxl_single_file(pipe, path: str | Path) -> Path:
    """Write `pipe` as an SGM-layout SDXL `.safetensors` (plus `lorastudio.config` metadata)."""
    sd = sdxl_checkpoint_from_diffusers(
        pipe.unet.state_dict(), pipe.vae.state_dict(), pipe.text_encoder.state_dict(), pipe.text_encoder_2.state_dict()
    )
    models = {"unet": pipe.unet, "vae": pipe.vae, "text_encoder": pipe.text_encoder, "text_encoder_2": pipe.text_encoder_2}
    return _save(sd, path, infer_sdxl_configs, models)


def _save(sd: dict[str, torch.Tensor], path: str | Path, infer: Callable[..., dict], models: Mapping[str, Any]) -> Path:
    from safetensors.torch import save_file

    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    overrides = config_overrides(infer(shapes, {}), models)
    metadata = {"format": "pt"}
    if overrides:
        metadata[CONFIG_METADATA_KEY] = json.dumps(overrides, sort_keys=True)
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous() for k, v in sd.items()}, str(tmp), metadata=metadata)
    return path


def config_overrides(inferred: Mapping[str, Mapping[str, Any]], models: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """{component: {field: value}} where a model's config differs from what inference yields."""
    out: dict[str, dict[str, Any]] = {}
    for name, model in models.items():
        guess = inferred[name]
        if hasattr(model.config, "to_dict"):  # transformers: compare the fields inference emits
            actual = model.config.to_dict()
            fields = [k for k in guess if k not in {"architectures", "model_type"}]
            resolved = dict(guess)
        else:  # diffusers: compare every __init__ argument, inference's or the class default
            actual = dict(model.config)
            params = inspect.signature(type(model).__init__).parameters
            fields = [k for k in params if k != "self" and k in actual]
            resolved = {k: guess.get(k, params[k].default) for k in fields}
        diff = {k: _plain(actual.get(k)) for k in fields if _plain(actual.get(k)) != _plain(resolved.get(k))}
        if diff:
            out[name] = diff
    return out


def _plain(value: Any) -> Any:
    # configs hold tuples in memory and lists once they went through JSON
    return json.loads(json.dumps(value))
