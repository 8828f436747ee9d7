"""Write diffusers SD 1.x / SDXL weights in the original single-file checkpoint layout.

The single-file layout is what A1111, ComfyUI and kohya read and write (`model.safetensors` under
models/Stable-diffusion). It nests every component under the attribute path it had in the original
LDM/SGM `LatentDiffusion` object:

    SD 1.x  model.diffusion_model.*  first_stage_model.*  cond_stage_model.transformer.text_model.*
    SDXL    model.diffusion_model.*  first_stage_model.*  conditioner.embedders.0.transformer.text_model.*
                                                          conditioner.embedders.1.model.*   (OpenCLIP)

Inputs are plain state dicts so that a training export can call this without building models.
"""

from __future__ import annotations

import re
from typing import Callable, Mapping

import torch

from lorastudio.models.formats.ldm_unet_names import diffusers_to_ldm_unet_key, layout_from_diffusers_keys

__all__ = [
    "UNET_PREFIX",
    "VAE_PREFIX",
    "SD1_TEXT_ENCODER_PREFIX",
    "SDXL_TEXT_ENCODER_PREFIX",
    "SDXL_TEXT_ENCODER_2_PREFIX",
    "sd1_checkpoint_from_diffusers",
    "sdxl_checkpoint_from_diffusers",
    "unet_to_ldm",
    "vae_to_ldm",
    "clip_to_ldm",
    "clip_to_open_clip",
]

Tensor = torch.Tensor

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD1_TEXT_ENCODER_PREFIX = "cond_stage_model.transformer."
SDXL_TEXT_ENCODER_PREFIX = "conditioner.embedders.0.transformer."
SDXL_TEXT_ENCODER_2_PREFIX = "conditioner.embedders.1.model."


def sd1_checkpoint_from_diffusers(
    unet_sd: Mapping[str, Tensor], vae_sd: Mapping[str, Tensor], text_encoder_sd: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    _reject_adapters(unet_sd, vae_sd, text_encoder_sd)
    out: dict[str, Tensor] = {}
    _merge(out, UNET_PREFIX, unet_to_ldm(unet_sd))
    _merge(out, VAE_PREFIX, vae_to_ldm(vae_sd))
    _merge(out, SD1_TEXT_ENCODER_PREFIX, clip_to_ldm(text_encoder_sd))
    return out


def sdxl_checkpoint_from_diffusers(
    unet_sd: Mapping[str, Tensor],
    vae_sd: Mapping[str, Tensor],
    te1_sd: Mapping[str, Tensor],
    te2_sd: Mapping[str, Tensor],
) -> dict[str, Tensor]:
    _reject_adapters(unet_sd, vae_sd, te1_sd, te2_sd)
    out: dict[str, Tensor] = {}
    _merge(out, UNET_PREFIX, unet_to_ldm(unet_sd))
    _merge(out, VAE_PREFIX, vae_to_ldm(vae_sd))
    _merge(out, SDXL_TEXT_ENCODER_PREFIX, clip_to_ldm(te1_sd))
    _merge(out, SDXL_TEXT_ENCODER_2_PREFIX, clip_to_open_clip(te2_sd))
    return out


def _reject_adapters(*sds: Mapping[str, Tensor]) -> None:
    for sd in sds:
        for k in sd:
            if ".lora_" in k or ".base_layer." in k:
                # peft-wrapped modules would be written with the LoRA as stray extra tensors
                raise ValueError(f"{k!r}: merge or unload the LoRA adapters before writing a checkpoint")


def _merge(out: dict[str, Tensor], prefix: str, part: Mapping[str, Tensor]) -> None:
    for k, v in part.items():
        out[prefix + k] = v


# --- UNet -----------------------------------------------------------------------------------------


def unet_to_ldm(unet_sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """diffusers UNet2DConditionModel state dict -> LDM/SGM UNet names (no prefix). Tensors are shared."""
    layout = layout_from_diffusers_keys(unet_sd.keys())
    return _rename_all(unet_sd, lambda k: diffusers_to_ldm_unet_key(k, layout), "UNet")


# --- VAE ------------------------------------------------------------------------------------------

_VAE_RESNET_CHILDREN = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
_VAE_ATTENTION_CHILDREN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_VAE_TOP = {
    "encoder.conv_in": "encoder.conv_in",
    "encoder.conv_out": "encoder.conv_out",
    "encoder.conv_norm_out": "encoder.norm_out",
    "decoder.conv_in": "decoder.conv_in",
    "decoder.conv_out": "decoder.conv_out",
    "decoder.conv_norm_out": "decoder.norm_out",
    "quant_conv": "quant_conv",
    "post_quant_conv": "post_quant_conv",
}
_VAE_BLOCK_RE = re.compile(
    r"^(encoder|decoder)\.(?:(down_blocks|up_blocks)\.(\d+)\.(resnets|downsamplers|upsamplers)\.(\d+)"
    r"|mid_block\.(resnets|attentions)\.(\d+))\.(.+)$"
)
# LDM's AttnBlock projects with 1x1 convolutions; diffusers stores the same weights as Linear.
_VAE_CONV1X1_RE = re.compile(r"\.mid\.attn_1\.(q|k|v|proj_out)\.weight$")


def vae_to_ldm(vae_sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """diffusers AutoencoderKL state dict -> LDM `AutoencoderKL` names (no prefix)."""
    num_up = 1 + max((int(m[1]) for k in vae_sd if (m := re.match(r"decoder\.up_blocks\.(\d+)\.", k))), default=-1)

    def rename(key: str) -> str:
        param = key.rsplit(".", 1)
        if param[0] in _VAE_TOP:
            return f"{_VAE_TOP[param[0]]}.{param[1]}"
        m = _VAE_BLOCK_RE.match(key)
        if not m:
            raise ValueError(f"VAE key {key!r} has no LDM counterpart")
        side, level_kind, level, kind, idx, mid_kind, mid_idx, rest = m.groups()
        if level_kind is not None:
            # LDM numbers decoder levels from the lowest resolution up; diffusers from the top
            lvl = int(level) if level_kind == "down_blocks" else num_up - 1 - int(level)
            stage = "down" if level_kind == "down_blocks" else "up"
            if kind == "resnets":
                return f"{side}.{stage}.{lvl}.block.{idx}.{_child(rest, _VAE_RESNET_CHILDREN, key)}"
            sampler = "downsample" if kind == "downsamplers" else "upsample"
            return f"{side}.{stage}.{lvl}.{sampler}.{rest}"
        if mid_kind == "resnets":
            return f"{side}.mid.block_{int(mid_idx) + 1}.{_child(rest, _VAE_RESNET_CHILDREN, key)}"
        return f"{side}.mid.attn_{int(mid_idx) + 1}.{_child(rest, _VAE_ATTENTION_CHILDREN, key)}"

    out = _rename_all(vae_sd, rename, "VAE")
    for k, v in out.items():
        if _VAE_CONV1X1_RE.search(k) and v.ndim == 2:
            out[k] = v.reshape(*v.shape, 1, 1)
    return out


def _child(rest: str, table: Mapping[str, str], key: str) -> str:
    head, _, param = rest.rpartition(".")
    if head not in table:
        raise ValueError(f"VAE key {key!r}: unknown sub-module {head!r}")
    return f"{table[head]}.{param}"


# --- text encoders --------------------------------------------------------------------------------


def _text_model_key(key: str) -> str:
    # transformers >= 5.6 flattened CLIPTextModel (keys start at `embeddings.`), while
    # CLIPTextModelWithProjection and every single-file checkpoint keep the `text_model.` level.
    return key if key.startswith(("text_model.", "text_projection.")) else f"text_model.{key}"


def clip_to_ldm(te_sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """transformers CLIPTextModel state dict -> names under `...transformer.` (HF layout kept)."""
    return {_text_model_key(k): v for k, v in te_sd.items()}


_OPEN_CLIP_TOP = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
}
_OPEN_CLIP_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "self_attn.out_proj": "attn.out_proj",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
_LAYER_RE = re.compile(r"^text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")
_QKV = ("q_proj", "k_proj", "v_proj")


def clip_to_open_clip(te_sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """transformers CLIPTextModelWithProjection state dict -> OpenCLIP text tower names (no prefix).

    OpenCLIP's `nn.MultiheadAttention` keeps q, k, v as one `in_proj` (rows stacked q, k, v), and its
    `text_projection` is a bare (width, embed_dim) matrix applied as `x @ P`, i.e. the transpose of
    the Linear weight transformers uses.
    """
    sd = {_text_model_key(k): v for k, v in te_sd.items()}
    out: dict[str, Tensor] = {}
    fused: dict[tuple[str, str], dict[str, Tensor]] = {}
    for key, value in sd.items():
        if key in _OPEN_CLIP_TOP:
            out[_OPEN_CLIP_TOP[key]] = value
        elif key == "text_projection.weight":
            out["text_projection"] = value.t().contiguous()
        elif key == "text_model.embeddings.position_ids":
            continue  # buffer; OpenCLIP has no equivalent
        elif m := _LAYER_RE.match(key):
            layer, module, param = m.groups()
            base = f"transformer.resblocks.{layer}"
            if module.startswith("self_attn.") and module.split(".", 1)[1] in _QKV:
                fused.setdefault((base, param), {})[module.split(".", 1)[1]] = value
            elif module in _OPEN_CLIP_LAYER:
                out[f"{base}.{_OPEN_CLIP_LAYER[module]}.{param}"] = value
            else:
                raise ValueError(f"text encoder key {key!r} has no OpenCLIP counterpart")
        else:
            raise ValueError(f"text encoder key {key!r} has no OpenCLIP counterpart")
    for (base, param), parts in fused.items():
        missing = [p for p in _QKV if p not in parts]
        if missing:
            raise ValueError(f"{base}: attention {param} lacks {missing} to fuse into in_proj_{param}")
        out[f"{base}.attn.in_proj_{param}"] = torch.cat([parts[p] for p in _QKV], dim=0)
    if "text_projection" not in out:
        raise ValueError("SDXL second text encoder state dict has no text_projection.weight")
    return out


def _rename_all(sd: Mapping[str, Tensor], rename: Callable[[str], str], what: str) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        new = rename(key)
        if new in out:
            raise ValueError(f"{what}: two keys map to {new!r}")
        out[new] = value
    return out
