"""A tiny random FLUX.1 pipeline and writers of the files users keep for FLUX.1.

Structure follows the real model where converters and loaders care: two double and two single
blocks (so block indices beyond 0 are exercised), RMSNorm'd 16-wide heads, a 16-channel autoencoder
with two levels (the decoder's level order is reversed in the LDM layout) and no quant convs, a
CLIP text encoder over the real 49408-token vocabulary and a gated-GELU T5 encoder over the real
32128-row embedding, driven by the bundled tokenizers. A 2-step 32x32 generation takes well under
a second on CPU.

Fields that shapes do not reveal and that differ from FLUX.1 (RoPE axes, group-norm groups, VAE
scaling, CLIP head count, ...) go into each file's `lorastudio.config` metadata, which is what
`infer_flux_configs` reads back.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from lorastudio.core.atomic import atomic_path
from lorastudio.models.formats.flux_checkpoint import (
    CONFIG_METADATA_KEY,
    T5_TOKENIZER_DIR,
    default_flux_configs,
    flux_checkpoint_from_diffusers,
    infer_component_config,
    infer_flux_configs,
    join_flux_checkpoint,
)
from lorastudio.testing.tiny_sd import TINY_CLIP
from lorastudio.models.formats.flux_components import (
    ae_from_diffusers,
    clip_l_from_transformers,
    t5xxl_from_transformers,
)
from lorastudio.testing.tiny_sd import config_overrides, tiny_clip_tokenizer

__all__ = [
    "TINY_FLUX_TRANSFORMER",
    "tiny_flux_pipeline",
    "tiny_t5_tokenizer",
    "save_flux_single_file",
    "save_flux_component_files",
    "COMPONENT_FILES",
]

TINY_FLUX_TRANSFORMER: dict[str, Any] = dict(
    patch_size=1,
    in_channels=64,  # 16 latent channels packed 2x2, as in FLUX.1
    num_layers=2,
    num_single_layers=2,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=32,  # = T5 d_model
    pooled_projection_dim=32,  # = CLIP hidden size
    axes_dims_rope=(4, 6, 6),  # must add up to attention_head_dim
)
_VAE: dict[str, Any] = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    block_out_channels=(8, 16),
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    latent_channels=16,
    layers_per_block=1,
    norm_num_groups=4,
    use_quant_conv=False,
    use_post_quant_conv=False,
    scaling_factor=0.3611,
    shift_factor=0.1159,
)
# FLUX.1's text encoder is SD's CLIP-L: the same tiny stand-in.
_CLIP = TINY_CLIP
_T5: dict[str, Any] = dict(
    vocab_size=32128,  # T5 v1.1 pads the 32100-token vocabulary to 32128 rows
    d_model=32,
    d_kv=8,
    d_ff=37,
    num_layers=2,
    num_decoder_layers=2,
    num_heads=4,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    feed_forward_proj="gated-gelu",
    dropout_rate=0.0,
    layer_norm_epsilon=1e-6,
    pad_token_id=0,
    eos_token_id=1,
    decoder_start_token_id=0,
    tie_word_embeddings=False,
)
COMPONENT_FILES = {"vae": "ae.safetensors", "text_encoder": "clip_l.safetensors", "text_encoder_2": "t5xxl.safetensors"}


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    # fork_rng so that building a tiny model never shifts the caller's random stream
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@functools.lru_cache(maxsize=1)
def _t5_tokenizer_cached():
    from transformers import T5TokenizerFast

    return T5TokenizerFast.from_pretrained(str(T5_TOKENIZER_DIR), local_files_only=True)


def tiny_t5_tokenizer():
    """The bundled FLUX.1 T5 tokenizer (a private copy: callers may add tokens)."""
    return copy.deepcopy(_t5_tokenizer_cached())


def tiny_flux_pipeline(seed: int = 0, guidance: bool = True):
    """FluxPipeline with random tiny weights, identical for identical seeds.

    guidance=True builds a dev-like model (guidance embedder, dev scheduler with dynamic shift),
    False a schnell-like one.
    """
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    with _seeded(seed):
        transformer = FluxTransformer2DModel(**TINY_FLUX_TRANSFORMER, guidance_embeds=guidance).eval()
    with _seeded(seed + 1):
        vae = AutoencoderKL(**_VAE).eval()
    with _seeded(seed + 2):
        clip = CLIPTextModel(CLIPTextConfig(**_CLIP)).eval()
    with _seeded(seed + 3):
        t5 = T5EncoderModel(T5Config(**_T5)).eval()
    scheduler = default_flux_configs("dev" if guidance else "schnell")["scheduler"]
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(scheduler),
        vae=vae,
        text_encoder=clip,
        tokenizer=tiny_clip_tokenizer("<|endoftext|>"),
        text_encoder_2=t5,
        tokenizer_2=tiny_t5_tokenizer(),
        transformer=transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_flux_single_file(pipe, path: str | Path, all_in_one: bool = False) -> Path:
    """Write `pipe`'s transformer in the BFL layout (flux1-dev.safetensors style), or with
    all_in_one the ComfyUI/Forge checkpoint layout that also carries VAE, CLIP-L and T5."""
    sd = flux_checkpoint_from_diffusers(pipe.transformer.state_dict(), pipe.transformer.config)
    models: dict[str, Any] = {"transformer": pipe.transformer}
    if all_in_one:
        sd = join_flux_checkpoint(
            sd,
            vae=ae_from_diffusers(pipe.vae.state_dict()),
            clip_l=clip_l_from_transformers(pipe.text_encoder.state_dict()),
            t5xxl=t5xxl_from_transformers(pipe.text_encoder_2.state_dict()),
        )
        models.update(vae=pipe.vae, text_encoder=pipe.text_encoder, text_encoder_2=pipe.text_encoder_2)
    inferred = infer_flux_configs({k: tuple(v.shape) for k, v in sd.items()}, {}, validate=False)
    return _write(sd, path, _overrides(inferred, models))


def save_flux_component_files(pipe, folder: str | Path) -> dict[str, Path]:
    """Write the VAE, CLIP-L and T5 as ae.safetensors, clip_l.safetensors and t5xxl.safetensors
    (the files kept beside a transformer-only FLUX.1 file); returns {component: path}."""
    folder = Path(folder)
    parts = {
        "vae": (ae_from_diffusers(pipe.vae.state_dict()), pipe.vae),
        "text_encoder": (clip_l_from_transformers(pipe.text_encoder.state_dict()), pipe.text_encoder),
        "text_encoder_2": (t5xxl_from_transformers(pipe.text_encoder_2.state_dict()), pipe.text_encoder_2),
    }
    out = {}
    for name, (sd, model) in parts.items():
        inferred = {name: infer_component_config(name, {k: tuple(v.shape) for k, v in sd.items()})}
        out[name] = _write(sd, folder / COMPONENT_FILES[name], _overrides(inferred, {name: model}))
    return out


def _overrides(inferred: Mapping[str, Mapping[str, Any]], models: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for name, fields in config_overrides(inferred, models).items():
        config = models[name].config
        present = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        # legacy fields of the real configs (CLIP `dropout`, T5 `output_past`) that current
        # transformers no longer defines: nothing to record
        kept = {k: v for k, v in fields.items() if v is not None or k in present}
        if kept:
            out[name] = kept
    return out


def _write(sd: Mapping[str, torch.Tensor], path: str | Path, overrides: Mapping[str, Any]) -> Path:
    from safetensors.torch import save_file

    metadata = {"format": "pt"}
    if overrides:
        metadata[CONFIG_METADATA_KEY] = json.dumps(overrides, sort_keys=True)
    path = Path(path)
    with atomic_path(path) as tmp:
        # clone: tensors sliced from one parameter or tied to another cannot be saved as they are
        save_file({k: v.detach().clone().contiguous() for k, v in sd.items()}, str(tmp), metadata=metadata)
    return path
