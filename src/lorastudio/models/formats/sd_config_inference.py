"""Infer diffusers configs for SD 1.x / SDXL single-file checkpoints from tensor shapes alone.

Shapes come from the safetensors header, so a checkpoint is configured without reading its
weights and without any config download. What shapes cannot tell (attention head counts, group-norm
groups, activation, sample size, VAE scaling) follows the real models' conventions: SD 1.x uses 8
heads per UNet attention, SDXL 64 channels per head, CLIP 64 channels per head. A file whose model
breaks a convention (the tiny test models do) carries the exceptions in its safetensors metadata
under `lorastudio.config`: a JSON object `{component: {field: value}}` applied last.
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping, Sequence

from lorastudio.core.errors import ModelFileError

__all__ = [
    "CONFIG_METADATA_KEY",
    "SD1_SCHEDULER",
    "SDXL_SCHEDULER",
    "SD1_TOKENIZERS",
    "SDXL_TOKENIZERS",
    "infer_sd1_configs",
    "infer_sdxl_configs",
    "apply_config_overrides",
]

Shapes = Mapping[str, Sequence[int]]

CONFIG_METADATA_KEY = "lorastudio.config"

# scheduler/scheduler_config.json of stable-diffusion-v1-5 and stable-diffusion-xl-base-1.0
SD1_SCHEDULER: dict[str, Any] = {
    "_class_name": "PNDMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
SDXL_SCHEDULER: dict[str, Any] = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}
# SDXL's second tokenizer (OpenCLIP bigG) pads with "!" (id 0), not with <|endoftext|>; the pooled
# output and the padded positions of the hidden states depend on it.
SD1_TOKENIZERS: dict[str, dict[str, Any]] = {"tokenizer": {"kind": "clip", "pad_token": "<|endoftext|>"}}
SDXL_TOKENIZERS: dict[str, dict[str, Any]] = {
    "tokenizer": {"kind": "clip", "pad_token": "<|endoftext|>"},
    "tokenizer_2": {"kind": "clip", "pad_token": "!"},
}

_UNET = "model.diffusion_model."
_VAE = "first_stage_model."
_SD1_TE = "cond_stage_model.transformer."
_SDXL_TE1 = "conditioner.embedders.0.transformer."
_SDXL_TE2 = "conditioner.embedders.1.model."

# Fields of the real CLIP text configs that no shape reveals. eos_token_id=2 is what both SD 1.5
# and SDXL ship; transformers reads it as "pool at the argmax token id", the legacy CLIP pooling.
_CLIP_CONSTANTS: dict[str, Any] = {
    "model_type": "clip_text_model",
    "layer_norm_eps": 1e-05,
    "attention_dropout": 0.0,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}


def infer_sd1_configs(shapes: Shapes, metadata: Mapping[str, str] | None = None, *, source: str = "checkpoint") -> dict[str, dict]:
    """diffusers configs {unet, vae, text_encoder} of an SD 1.x single-file checkpoint."""
    unet_sh, vae_sh, te_sh = (_strip(shapes, p) for p in (_UNET, _VAE, _SD1_TE))
    te = _clip_config(te_sh, source, _SD1_TE, architecture="CLIPTextModel", hidden_act="quick_gelu")
    unet = _unet_config(unet_sh, source, sample_size=64)
    unet["attention_head_dim"] = 8  # SD 1.x: 8 heads in every attention, whatever the width
    if unet.get("addition_embed_type") is not None:
        raise ModelFileError(source, "UNet has an added-conditioning embedding (label_emb); this is not SD 1.x")
    configs = {
        "unet": unet,
        "vae": _vae_config(vae_sh, source, sample_size=512, scaling_factor=0.18215),
        "text_encoder": te,
    }
    return apply_config_overrides(configs, metadata, source=source)


def infer_sdxl_configs(shapes: Shapes, metadata: Mapping[str, str] | None = None, *, source: str = "checkpoint") -> dict[str, dict]:
    """diffusers configs {unet, vae, text_encoder, text_encoder_2} of an SDXL base single-file checkpoint."""
    unet_sh, vae_sh, te1_sh, te2_sh = (_strip(shapes, p) for p in (_UNET, _VAE, _SDXL_TE1, _SDXL_TE2))
    te1 = _clip_config(te1_sh, source, _SDXL_TE1, architecture="CLIPTextModel", hidden_act="quick_gelu")
    te2 = _open_clip_config(te2_sh, source, _SDXL_TE2)
    unet = _unet_config(unet_sh, source, sample_size=128)
    unet["attention_head_dim"] = [max(1, c // 64) for c in unet["block_out_channels"]]  # 64-channel heads
    if unet.get("addition_embed_type") != "text_time":
        raise ModelFileError(source, f"UNet lacks {_UNET}label_emb.0.0.weight, the SDXL size/crop conditioning")
    # label_emb input = 6 sinusoidal size/crop embeddings + the pooled text embedding of encoder 2
    extra = unet["projection_class_embeddings_input_dim"] - te2["projection_dim"]
    if extra <= 0 or extra % 6:
        raise ModelFileError(
            source,
            f"label_emb input width {unet['projection_class_embeddings_input_dim']} is not "
            f"6 x time-embedding + pooled width {te2['projection_dim']}",
        )
    unet["addition_time_embed_dim"] = extra // 6
    configs = {
        "unet": unet,
        "vae": _vae_config(vae_sh, source, sample_size=1024, scaling_factor=0.13025),
        "text_encoder": te1,
        "text_encoder_2": te2,
    }
    return apply_config_overrides(configs, metadata, source=source)


def apply_config_overrides(
    configs: dict[str, dict], metadata: Mapping[str, str] | None, *, source: str = "checkpoint"
) -> dict[str, dict]:
    """Apply the `lorastudio.config` metadata entry (if any) over inferred configs, in place."""
    raw = (metadata or {}).get(CONFIG_METADATA_KEY)
    if raw is None:
        return configs
    try:
        overrides = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ModelFileError(source, f"metadata {CONFIG_METADATA_KEY!r} is not valid JSON: {exc}") from None
    if not isinstance(overrides, dict) or not all(isinstance(v, dict) for v in overrides.values()):
        raise ModelFileError(source, f"metadata {CONFIG_METADATA_KEY!r} must be a JSON object of objects")
    for component, fields in overrides.items():
        if component not in configs:
            raise ModelFileError(
                source, f"metadata {CONFIG_METADATA_KEY!r} names component {component!r}; expected one of {sorted(configs)}"
            )
        configs[component].update(fields)
    return configs


# --- helpers --------------------------------------------------------------------------------------


def _strip(shapes: Shapes, prefix: str) -> dict[str, tuple[int, ...]]:
    n = len(prefix)
    return {k[n:]: tuple(int(d) for d in v) for k, v in shapes.items() if k.startswith(prefix)}


def _req(sh: Mapping[str, tuple[int, ...]], key: str, source: str, prefix: str) -> tuple[int, ...]:
    try:
        return sh[key]
    except KeyError:
        raise ModelFileError(source, f"missing tensor {prefix}{key}") from None


def _indices(sh: Mapping[str, Any], pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m[1]) for k in sh if (m := rx.match(k))})


def _depth(sh: Mapping[str, Any], block: str) -> int:
    return len(_indices(sh, re.escape(block) + r"\.transformer_blocks\.(\d+)\."))


def _uniform(values: list[int]) -> int | list[int]:
    return values[0] if len(set(values)) == 1 else values


def _unet_config(sh: Mapping[str, tuple[int, ...]], source: str, *, sample_size: int) -> dict[str, Any]:
    conv_in = _req(sh, "input_blocks.0.0.weight", source, _UNET)
    conv_out = _req(sh, "out.2.weight", source, _UNET)

    # input_blocks: conv_in, then per level its resnet(+attention) blocks, then a downsampler
    # (`.0.op`) between levels; the downsamplers are what delimit the levels.
    levels: list[list[int]] = [[]]
    for n in _indices(sh, r"input_blocks\.(\d+)\."):
        if n == 0:
            continue
        if f"input_blocks.{n}.0.op.weight" in sh:
            levels.append([])
        else:
            levels[-1].append(n)
    if not all(levels):
        raise ModelFileError(source, f"cannot read the UNet level structure from {_UNET}input_blocks.*")

    channels, down_attn, down_depth = [], [], []
    for blocks in levels:
        first = blocks[0]
        channels.append(_req(sh, f"input_blocks.{first}.0.out_layers.3.weight", source, _UNET)[0])
        depth = _depth(sh, f"input_blocks.{first}.1")
        down_attn.append(depth > 0)
        down_depth.append(max(depth, 1))
    layers = [len(b) for b in levels]

    # output_blocks mirror the levels with one extra resnet each (diffusers requires exactly that)
    up_attn, up_depth, index = [], [], 0
    for i in range(len(levels)):
        expected = layers[len(levels) - 1 - i] + 1
        depth = _depth(sh, f"output_blocks.{index}.1")
        up_attn.append(depth > 0)
        up_depth.append(max(depth, 1))
        index += expected
    if _indices(sh, r"output_blocks\.(\d+)\.")[-1:] != [index - 1]:
        raise ModelFileError(source, f"{_UNET}output_blocks.* do not mirror input_blocks.* (expected {index} blocks)")

    mid_depth = _depth(sh, "middle_block.1")
    if mid_depth == 0:
        raise ModelFileError(source, f"missing {_UNET}middle_block.1 attention")
    if mid_depth != down_depth[-1]:
        # diffusers gives the mid block the depth of the last down level; nothing else is expressible
        raise ModelFileError(source, f"mid-block depth {mid_depth} differs from the last level's {down_depth[-1]}")

    first_attn = next((f"input_blocks.{b[0]}.1" for b, a in zip(levels, down_attn) if a), "middle_block.1")
    proj_in = _req(sh, f"{first_attn}.proj_in.weight", source, _UNET)
    cross_dim = _req(sh, f"{first_attn}.transformer_blocks.0.attn2.to_k.weight", source, _UNET)[1]
    time_dim = _req(sh, "time_embed.0.weight", source, _UNET)[0]

    config: dict[str, Any] = {
        "_class_name": "UNet2DConditionModel",
        "sample_size": sample_size,
        "in_channels": conv_in[1],
        "out_channels": conv_out[0],
        "conv_in_kernel": conv_in[-1],
        "conv_out_kernel": conv_out[-1],
        "block_out_channels": channels,
        "layers_per_block": _uniform(layers),
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in down_attn],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in up_attn],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "transformer_layers_per_block": _uniform(down_depth),
        "cross_attention_dim": cross_dim,
        # SpatialTransformer projects with a 1x1 conv in SD 1.x and with a Linear from SD 2 on
        "use_linear_projection": len(proj_in) == 2,
        "norm_num_groups": 32,
        "time_embedding_dim": None if time_dim == 4 * channels[0] else time_dim,
        "upcast_attention": None,  # as the released configs state it (diffusers reads it as False)
        "addition_embed_type": None,
        "projection_class_embeddings_input_dim": None,
    }
    if up_depth != down_depth[::-1]:
        config["reverse_transformer_layers_per_block"] = up_depth
    if "label_emb.0.0.weight" in sh:
        config["addition_embed_type"] = "text_time"
        config["projection_class_embeddings_input_dim"] = sh["label_emb.0.0.weight"][1]
    return config


def _vae_config(sh: Mapping[str, tuple[int, ...]], source: str, *, sample_size: int, scaling_factor: float) -> dict[str, Any]:
    levels = _indices(sh, r"encoder\.down\.(\d+)\.")
    if not levels:
        raise ModelFileError(source, f"missing {_VAE}encoder.down.* (no VAE in this checkpoint)")
    channels = [_req(sh, f"encoder.down.{i}.block.0.conv1.weight", source, _VAE)[0] for i in levels]
    n = len(levels)
    return {
        "_class_name": "AutoencoderKL",
        "sample_size": sample_size,
        "in_channels": _req(sh, "encoder.conv_in.weight", source, _VAE)[1],
        "out_channels": _req(sh, "decoder.conv_out.weight", source, _VAE)[0],
        "latent_channels": _req(sh, "decoder.conv_in.weight", source, _VAE)[1],
        "block_out_channels": channels,
        "layers_per_block": len(_indices(sh, r"encoder\.down\.0\.block\.(\d+)\.")),
        "down_block_types": ["DownEncoderBlock2D"] * n,
        "up_block_types": ["UpDecoderBlock2D"] * n,
        "norm_num_groups": 32,
        "act_fn": "silu",
        "scaling_factor": scaling_factor,
        "force_upcast": True,
        "use_quant_conv": "quant_conv.weight" in sh,
        "use_post_quant_conv": "post_quant_conv.weight" in sh,
        "mid_block_add_attention": "encoder.mid.attn_1.q.weight" in sh,
    }


def _clip_config(sh: Mapping[str, tuple[int, ...]], source: str, prefix: str, *, architecture: str, hidden_act: str) -> dict[str, Any]:
    # checkpoints saved with transformers < 4.22 lack the `text_model.` level; diffusers reads both
    sh = {k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in sh.items()}
    vocab, hidden = _req(sh, "text_model.embeddings.token_embedding.weight", source, prefix)
    layers = _indices(sh, r"text_model\.encoder\.layers\.(\d+)\.")
    if not layers:
        raise ModelFileError(source, f"missing {prefix}text_model.encoder.layers.*")
    return {
        "architectures": [architecture],
        **_CLIP_CONSTANTS,
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": _req(sh, "text_model.encoder.layers.0.mlp.fc1.weight", source, prefix)[0],
        "num_hidden_layers": len(layers),
        "num_attention_heads": max(1, hidden // 64),
        "max_position_embeddings": _req(sh, "text_model.embeddings.position_embedding.weight", source, prefix)[0],
        "hidden_act": hidden_act,
        # CLIP ViT-L/14 projects 768 -> 768; CLIPTextModel ignores it but the real config states it
        "projection_dim": hidden,
    }


def _open_clip_config(sh: Mapping[str, tuple[int, ...]], source: str, prefix: str) -> dict[str, Any]:
    vocab, hidden = _req(sh, "token_embedding.weight", source, prefix)
    layers = _indices(sh, r"transformer\.resblocks\.(\d+)\.")
    if not layers:
        raise ModelFileError(source, f"missing {prefix}transformer.resblocks.*")
    return {
        "architectures": ["CLIPTextModelWithProjection"],
        **_CLIP_CONSTANTS,
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": _req(sh, "transformer.resblocks.0.mlp.c_fc.weight", source, prefix)[0],
        "num_hidden_layers": len(layers),
        "num_attention_heads": max(1, hidden // 64),
        "max_position_embeddings": _req(sh, "positional_embedding", source, prefix)[0],
        "hidden_act": "gelu",  # OpenCLIP bigG uses exact GELU, OpenAI CLIP quick_gelu
        "projection_dim": _req(sh, "text_projection", source, prefix)[1],
    }
