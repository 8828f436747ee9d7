"""The mechanism SD 1.x and SDXL share for ControlNets (each family file says which keys and
pipeline classes are its own).

A ControlNet is its base UNet's encoder plus a hint encoder and zero convolutions, so its config
is the base model's UNet config (as `ControlNetModel.from_unet` makes it) with the hint encoder's
widths read off the file: no config download, and one that fits the user's base model.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from pathlib import Path
from typing import Any

from lorastudio.core.errors import ModelFileError
from lorastudio.models.families.base import LoadOptions

# Where the text width shows in each layout (LDM names, diffusers names).
_CONTEXT_KEYS = ("input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
                 "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight",
                 "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight",
                 "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight")
SDXL_MARKERS = ("label_emb.0.0.weight", "add_embedding.linear_1.weight")


def has_hint_encoder(shapes) -> bool:
    return "input_hint_block.0.weight" in shapes or "controlnet_cond_embedding.conv_in.weight" in shapes


def context_width(shapes) -> int | None:
    for k in _CONTEXT_KEYS:
        if k in shapes:
            return int(shapes[k][1])
    return None


def _hint_widths(shapes) -> tuple[list[int], int]:
    if "input_hint_block.0.weight" in shapes:
        n = len({k.split(".")[1] for k in shapes if k.startswith("input_hint_block.")})  # convolutions
        first = shapes["input_hint_block.0.weight"]
        widths = [first[0]] + [shapes[f"input_hint_block.{2 * i}.weight"][0] for i in range(2, n - 1, 2)]
        return [int(w) for w in widths], int(first[1])
    first = shapes["controlnet_cond_embedding.conv_in.weight"]
    n = len({k.split(".")[2] for k in shapes if k.startswith("controlnet_cond_embedding.blocks.")})
    widths = [first[0]] + [shapes[f"controlnet_cond_embedding.blocks.{i}.weight"][0] for i in range(1, n, 2)]
    return [int(w) for w in widths], int(first[1])


def controlnet_config(unet_config, shapes) -> dict[str, Any]:
    from diffusers import ControlNetModel

    params = inspect.signature(ControlNetModel.__init__).parameters
    cfg = {k: v for k, v in dict(unet_config).items() if k in params}
    widths, channels = _hint_widths(shapes)
    cfg["conditioning_embedding_out_channels"] = widths
    cfg["conditioning_channels"] = channels
    conv_in = shapes.get("input_blocks.0.0.weight") or shapes.get("conv_in.weight")
    if conv_in:  # an inpainting base UNet takes 9 channels; its ControlNets still take the 4 latent ones
        cfg["in_channels"] = int(conv_in[1])
    cfg["_class_name"] = "ControlNetModel"
    return cfg


def load_sd_controlnet(path: Path, shapes, pipe, options: LoadOptions, *, folder_config=None):
    """ControlNetModel for an SD-style `pipe` from a single file or a diffusers folder's weights."""
    import torch
    from diffusers import ControlNetModel

    want, have = pipe.unet.config.cross_attention_dim, context_width(shapes)
    if have is not None and have != want:
        raise ModelFileError(path, f"is a ControlNet for a model with {have}-wide text embeddings; the loaded "
                                   f"model's are {want} wide")
    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[options.dtype]
    try:
        if folder_config is not None:
            cn = ControlNetModel.from_pretrained(str(path.parent), local_files_only=True, torch_dtype=dtype,
                                                 variant="fp16" if path.name.endswith(".fp16.safetensors") else None)
        elif "label_emb.0.0.weight" in shapes:
            cn = _ldm_sdxl_controlnet(path, controlnet_config(pipe.unet.config, shapes), dtype)
        else:
            cfg_dir = _config_dir(controlnet_config(pipe.unet.config, shapes), options)
            cn = ControlNetModel.from_single_file(str(path), config=str(cfg_dir), local_files_only=True,
                                                  torch_dtype=dtype)
    except (ValueError, KeyError, RuntimeError, OSError) as exc:
        raise ModelFileError(path, f"cannot be read as a ControlNet for this model: {exc}") from None
    return (cn if cn.device == pipe.device else cn.to(pipe.device)).eval()


def _ldm_sdxl_controlnet(path: Path, cfg: dict, dtype):
    """An SDXL ControlNet in the original (SGM) names. diffusers' single-file converter maps every
    ControlNet tensor but SDXL's size/crop embedding (`label_emb`), so it is used for the rest and
    that one is added here under diffusers' name."""
    from diffusers import ControlNetModel
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint
    from safetensors.torch import load_file

    from lorastudio.models.controlnet import LDM_PREFIX

    sd = {(k[len(LDM_PREFIX):] if k.startswith(LDM_PREFIX) else k): v for k, v in load_file(str(path)).items()}
    converted = convert_controlnet_checkpoint(sd, cfg)
    for linear, index in ((1, 0), (2, 2)):
        for leaf in ("weight", "bias"):
            converted[f"add_embedding.linear_{linear}.{leaf}"] = sd[f"label_emb.0.{index}.{leaf}"]
    cn = ControlNetModel.from_config({k: v for k, v in cfg.items() if not k.startswith("_")})
    cn.load_state_dict(converted, strict=True)
    return cn.to(dtype)


def _config_dir(cfg: dict, options: LoadOptions) -> Path:
    from lorastudio.core.atomic import atomic_write_text

    text = json.dumps(cfg, sort_keys=True, indent=1, default=list)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    folder = (options.cache_dir or Path.home() / ".cache" / "lorastudio") / "configs" / f"controlnet-{digest}"
    if not (folder / "config.json").exists():
        atomic_write_text(folder / "config.json", text)
    return folder
