"""FLUX.1's other components in the key layouts of the files users keep beside the transformer.

    ae.safetensors        BFL's autoencoder: LDM `AutoencoderKL` names (encoder.down.N.block.M...,
                          no quant_conv), 16 latent channels, decoded as latents / 0.3611 + 0.1159
    clip_l.safetensors    transformers CLIPTextModel names under `text_model.` (OpenAI CLIP ViT-L/14)
    t5xxl_*.safetensors   transformers T5EncoderModel names; the embedding only as `shared.weight`
                          (`encoder.embed_tokens` is the same tensor, tied)

The all-in-one checkpoint stores exactly these names under `vae.`, `text_encoders.clip_l.transformer.`
and `text_encoders.t5xxl.transformer.` (see flux_checkpoint.py).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Collection, Mapping, Sequence

from lorastudio.core.errors import ModelFileError
from lorastudio.models.formats.sd_checkpoint import clip_to_ldm, vae_to_ldm

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "ae_from_diffusers",
    "ae_to_diffusers",
    "clip_l_from_transformers",
    "clip_l_to_transformers",
    "t5xxl_from_transformers",
    "t5xxl_to_transformers",
    "infer_ae_config",
    "infer_clip_l_config",
    "infer_t5xxl_config",
    "build_flux_modules",
]

_T5_TIED = "encoder.embed_tokens.weight"
_CLIP_DROP = ("text_model.embeddings.position_ids", "text_projection.weight", "logit_scale")


# --- autoencoder ----------------------------------------------------------------------------------


def ae_from_diffusers(vae_sd: Mapping[str, "Tensor"]) -> dict[str, "Tensor"]:
    """diffusers AutoencoderKL state dict -> ae.safetensors names (the LDM layout)."""
    return vae_to_ldm(vae_sd)


def ae_to_diffusers(ae_sd: Mapping[str, "Tensor"], config: Mapping[str, Any], *, source: object = "ae") -> dict[str, "Tensor"]:
    """ae.safetensors names -> diffusers AutoencoderKL names for a VAE built from `config`.

    The name map is the inverse of `ae_from_diffusers` applied to an empty (meta) model of that
    config, so both directions agree by construction; every tensor must be used exactly once.
    """
    import torch
    from diffusers import AutoencoderKL

    cfg = {k: v for k, v in dict(config).items() if not k.startswith("_")}
    with torch.device("meta"):
        expected = AutoencoderKL.from_config(cfg).state_dict()
    # vae_to_ldm renames key by key and keeps the order, so the two key lists line up
    names = dict(zip(vae_to_ldm(expected).keys(), expected.keys(), strict=True))
    out: dict[str, Tensor] = {}
    for key, value in ae_sd.items():
        if key not in names:
            raise ModelFileError(source, f"{key!r} is not part of an autoencoder with this config")
        target = names[key]
        want = expected[target].shape
        # LDM's mid-block attention uses 1x1 convolutions where diffusers has Linear layers
        out[target] = value.reshape(want) if value.ndim != len(want) else value
    missing = sorted(set(expected) - set(out))
    if missing:
        raise ModelFileError(source, f"autoencoder lacks {len(missing)} tensors, e.g. {[n for n in names if names[n] in missing][:3]}")
    return out


def infer_ae_config(sh: Mapping[str, Sequence[int]], *, source: object = "ae") -> dict[str, Any]:
    """Architecture fields an ae state dict (key -> shape) reveals."""
    levels = _indices(sh, r"encoder\.down\.(\d+)\.")
    if not levels or "decoder.conv_in.weight" not in sh:
        raise ModelFileError(source, "no encoder.down.* / decoder.conv_in.weight: not an autoencoder")
    n = len(levels)
    return {
        "in_channels": sh["encoder.conv_in.weight"][1],
        "out_channels": sh["decoder.conv_out.weight"][0],
        "latent_channels": sh["decoder.conv_in.weight"][1],
        "block_out_channels": [sh[f"encoder.down.{i}.block.0.conv1.weight"][0] for i in levels],
        "layers_per_block": len(_indices(sh, r"encoder\.down\.0\.block\.(\d+)\.")),
        "down_block_types": ["DownEncoderBlock2D"] * n,
        "up_block_types": ["UpDecoderBlock2D"] * n,
        "use_quant_conv": "quant_conv.weight" in sh,
        "use_post_quant_conv": "post_quant_conv.weight" in sh,
        "mid_block_add_attention": "encoder.mid.attn_1.q.weight" in sh,
    }


# --- CLIP-L ---------------------------------------------------------------------------------------


def clip_l_from_transformers(clip_sd: Mapping[str, "Tensor"]) -> dict[str, "Tensor"]:
    """transformers CLIPTextModel state dict (flattened or not) -> clip_l.safetensors names."""
    return {k: v for k, v in clip_to_ldm(clip_sd).items() if k not in _CLIP_DROP}


def clip_l_to_transformers(sd: Mapping[str, "Tensor"], model_keys: Collection[str]) -> dict[str, "Tensor"]:
    """clip_l names -> the names of the CLIPTextModel at hand (transformers >= 5.6 drops `text_model.`)."""
    flat = not any(k.startswith("text_model.") for k in model_keys)
    sd = {k: v for k, v in sd.items() if k not in _CLIP_DROP}
    return {(k[len("text_model."):] if flat and k.startswith("text_model.") else k): v for k, v in sd.items()}


def infer_clip_l_config(sh: Mapping[str, Sequence[int]], *, source: object = "clip_l") -> dict[str, Any]:
    key = "text_model.embeddings.token_embedding.weight"
    if key not in sh:
        raise ModelFileError(source, f"no {key}: not a CLIP text encoder")
    vocab, hidden = sh[key]
    return {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": sh["text_model.encoder.layers.0.mlp.fc1.weight"][0],
        "num_hidden_layers": len(_indices(sh, r"text_model\.encoder\.layers\.(\d+)\.")),
        "num_attention_heads": max(1, hidden // 64),  # OpenAI CLIP: 64-wide heads
        "max_position_embeddings": sh["text_model.embeddings.position_embedding.weight"][0],
        "projection_dim": hidden,
    }


# --- T5-XXL ---------------------------------------------------------------------------------------


def t5xxl_from_transformers(t5_sd: Mapping[str, "Tensor"]) -> dict[str, "Tensor"]:
    """transformers T5EncoderModel state dict -> t5xxl names (the tied embedding stored once)."""
    return {k: v for k, v in t5_sd.items() if k != _T5_TIED}


def t5xxl_to_transformers(sd: Mapping[str, "Tensor"], model_keys: Collection[str]) -> dict[str, "Tensor"]:
    out = dict(sd)
    if _T5_TIED in model_keys and _T5_TIED not in out and "shared.weight" in out:
        out[_T5_TIED] = out["shared.weight"]
    return out


def infer_t5xxl_config(sh: Mapping[str, Sequence[int]], *, source: object = "t5xxl") -> dict[str, Any]:
    """T5 encoder fields from shapes; the relative-position table gives the head count."""
    rel = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    if "shared.weight" not in sh or rel not in sh:
        raise ModelFileError(source, f"no shared.weight / {rel}: not a T5 encoder")
    vocab, d_model = sh["shared.weight"]
    buckets, heads = sh[rel]
    gated = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in sh
    wi = "wi_0" if gated else "wi"
    return {
        "vocab_size": vocab,
        "d_model": d_model,
        "num_layers": len(_indices(sh, r"encoder\.block\.(\d+)\.")),
        "num_heads": heads,
        "d_kv": sh["encoder.block.0.layer.0.SelfAttention.q.weight"][0] // heads,
        "d_ff": sh[f"encoder.block.0.layer.1.DenseReluDense.{wi}.weight"][0],
        "relative_attention_num_buckets": buckets,
        "feed_forward_proj": "gated-gelu" if gated else "relu",
        "is_gated_act": gated,
        "dense_act_fn": "gelu_new" if gated else "relu",
    }


# --- building modules -----------------------------------------------------------------------------


def build_flux_modules(
    parts: Mapping[str, Mapping[str, "Tensor"]], configs: Mapping[str, Mapping[str, Any]], *, source: object = "checkpoint"
) -> dict[str, Any]:
    """Models for the components in `parts` (names as `split_flux_checkpoint` gives them), without
    random initialisation: parameters start empty and take the file's tensors as they are (dtype,
    storage), and every model tensor must be present (strict)."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from lorastudio.models.formats.flux_checkpoint import flux_checkpoint_to_diffusers

    def plain(cfg: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in cfg.items() if not k.startswith("_")}

    out: dict[str, Any] = {}
    for name, sd in parts.items():
        cfg = configs[name]
        with init_empty_weights():  # parameters on `meta`, buffers (position ids) real
            if name == "transformer":
                model = FluxTransformer2DModel.from_config(plain(cfg))
            elif name == "vae":
                model = AutoencoderKL.from_config(plain(cfg))
            elif name == "text_encoder":
                model = CLIPTextModel(CLIPTextConfig(**plain(cfg)))
            elif name == "text_encoder_2":
                model = T5EncoderModel(T5Config(**plain(cfg)))
            else:
                raise ModelFileError(source, f"unknown FLUX.1 component {name!r}")
        keys = model.state_dict().keys()
        if name == "transformer":
            sd = flux_checkpoint_to_diffusers(sd, cfg)
        elif name == "vae":
            sd = ae_to_diffusers(sd, cfg, source=source)
        elif name == "text_encoder":
            sd = clip_l_to_transformers(sd, keys)
        else:
            sd = t5xxl_to_transformers(sd, keys)
        try:
            model.load_state_dict(sd, strict=True, assign=True)
        except RuntimeError as exc:
            raise ModelFileError(source, f"{name}: {exc}") from None
        if name == "text_encoder_2":
            model.tie_weights()  # assign=True replaced the shared embedding object; re-link encoder.embed_tokens
        out[name] = model.eval()
    return out


def _indices(sh: Mapping[str, Any], pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in sh if (m := rx.match(k))})
