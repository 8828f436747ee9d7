"""Tiny random ControlNets and the SD 1.x pipeline they fit, written in the layouts users keep.

A ControlNet's hint encoder always shrinks the control image 8x (three stride-2 convolutions in
the six-block `input_hint_block` every single-file converter expects), so it needs a base model
whose VAE shrinks 8x too: `tiny_sd1_x8_pipeline` is the tiny SD 1.x model with a four-level VAE.

`ControlNetModel.from_unet` starts the zero convolutions at zero (a ControlNet that changes
nothing); the tiny ones get small random values there so a test can see the control act.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lorastudio.core.atomic import atomic_path
from lorastudio.models.formats.ldm_unet_names import diffusers_to_ldm_unet_key, layout_from_unet_config

HINT_CHANNELS = (4, 8, 8, 16)  # four levels: the real layout (16, 32, 96, 256), narrowed

_X8_VAE: dict[str, Any] = dict(
    sample_size=64, in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
    block_out_channels=(8, 8, 16, 16), norm_num_groups=4,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)


def tiny_sd1_x8_pipeline(seed: int = 0):
    """The tiny SD 1.x pipeline (same UNet and text encoder) with a VAE that shrinks 8x, as SD's."""
    from diffusers import AutoencoderKL

    from lorastudio.testing.tiny_sd import _seeded, tiny_sd1_pipeline

    pipe = tiny_sd1_pipeline(seed)
    with _seeded(seed + 1):
        pipe.vae = AutoencoderKL(**_X8_VAE, scaling_factor=0.18215).eval()
    pipe.register_modules(vae=pipe.vae)
    pipe.vae_scale_factor = 8
    pipe.image_processor.config.vae_scale_factor = 8
    return pipe


def tiny_controlnet(unet, seed: int = 0):
    """A ControlNetModel shaped after `unet` (any family), every weight random."""
    from diffusers import ControlNetModel

    from lorastudio.testing.tiny_sd import _seeded

    with _seeded(seed):
        cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=HINT_CHANNELS,
                                       load_weights_from_unet=False).eval()
        with torch.no_grad():
            zeroed = [cn.controlnet_mid_block, cn.controlnet_cond_embedding.conv_out, *cn.controlnet_down_blocks]
            for module in zeroed:
                for p in module.parameters():
                    p.copy_(torch.randn_like(p) * 0.2)
    return cn


def tiny_flux_controlnet(transformer, seed: int = 0, *, num_layers: int = 1, num_single_layers: int = 1):
    """A FluxControlNetModel (InstantX layout) shaped after a FLUX transformer, every weight random
    (diffusers zero-initialises the output projections, which would make the ControlNet act as none)."""
    from diffusers import FluxControlNetModel

    from lorastudio.testing.tiny_sd import _seeded

    cfg = transformer.config
    with _seeded(seed):
        cn = FluxControlNetModel(patch_size=cfg.patch_size, in_channels=cfg.in_channels, num_layers=num_layers,
                                 num_single_layers=num_single_layers, attention_head_dim=cfg.attention_head_dim,
                                 num_attention_heads=cfg.num_attention_heads,
                                 joint_attention_dim=cfg.joint_attention_dim,
                                 pooled_projection_dim=cfg.pooled_projection_dim, guidance_embeds=cfg.guidance_embeds,
                                 axes_dims_rope=list(cfg.axes_dims_rope)).eval()
        with torch.no_grad():
            for module in (cn.controlnet_x_embedder, *cn.controlnet_blocks, *cn.controlnet_single_blocks):
                for p in module.parameters():
                    p.copy_(torch.randn_like(p) * 0.2)
    return cn


def controlnet_to_ldm(cn, unet_config) -> dict[str, torch.Tensor]:
    """diffusers ControlNetModel state dict -> the original ControlNet names (`input_hint_block`,
    `zero_convs`, `middle_block_out`, the UNet encoder under its LDM names), no prefix."""
    layout = layout_from_unet_config(dict(unet_config))
    n_hint = len(cn.controlnet_cond_embedding.blocks)
    out: dict[str, torch.Tensor] = {}
    for key, value in cn.state_dict().items():
        head, _, leaf = key.rpartition(".")
        if key.startswith("controlnet_cond_embedding."):
            part = head.split(".", 1)[1]
            index = {"conv_in": 0, "conv_out": 2 * (n_hint + 1)}.get(part)
            if index is None:  # blocks.i
                index = 2 * (int(part.split(".")[1]) + 1)
            name = f"input_hint_block.{index}.{leaf}"
        elif key.startswith("controlnet_down_blocks."):
            name = f"zero_convs.{head.split('.')[1]}.0.{leaf}"
        elif key.startswith("controlnet_mid_block."):
            name = f"middle_block_out.0.{leaf}"
        elif key.startswith("add_embedding.linear_"):  # SDXL: label_emb.0.0 / label_emb.0.2
            name = f"label_emb.0.{0 if head.endswith('_1') else 2}.{leaf}"
        else:
            name = diffusers_to_ldm_unet_key(key, layout)
        out[name] = value
    return out


def save_controlnet_single_file(cn, unet_config, path: str | Path, *, prefix: str = "control_model.",
                                dtype: torch.dtype | None = None) -> Path:
    """Write `cn` as a single-file ControlNet (`control_v11p_sd15_canny.safetensors` layout)."""
    from safetensors.torch import save_file

    sd = {prefix + k: (v.to(dtype) if dtype else v).detach().contiguous()
          for k, v in controlnet_to_ldm(cn, unet_config).items()}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(sd, str(tmp), metadata={"format": "pt"})
    return path


def write_controlnet_models_root(root: str | Path, controlnet: str = "control_tiny") -> dict[str, Any]:
    """An A1111 models folder with the tiny 8x SD 1.x checkpoint (`Stable-diffusion/tiny-x8.safetensors`)
    and a single-file ControlNet for it (`ControlNet/<controlnet>.safetensors`); returns the in-memory
    originals. Folders already there are kept."""
    from lorastudio.testing.tiny_sd import save_sd1_single_file

    root = Path(root)
    for d in ("Stable-diffusion", "Lora", "VAE", "ControlNet"):
        (root / d).mkdir(parents=True, exist_ok=True)
    pipe = tiny_sd1_x8_pipeline(seed=0)
    save_sd1_single_file(pipe, root / "Stable-diffusion" / "tiny-x8.safetensors")
    cn = tiny_controlnet(pipe.unet, seed=5)
    save_controlnet_single_file(cn, pipe.unet.config, root / "ControlNet" / f"{controlnet}.safetensors")
    return {"pipe": pipe, "controlnet": cn}


def tiny_sdxl_x8_pipeline(seed: int = 0):
    """The tiny SDXL pipeline with the 8x VAE (SDXL's scaling factor)."""
    from diffusers import AutoencoderKL

    from lorastudio.testing.tiny_sd import _seeded, tiny_sdxl_pipeline

    pipe = tiny_sdxl_pipeline(seed)
    with _seeded(seed + 1):
        pipe.vae = AutoencoderKL(**_X8_VAE, scaling_factor=0.13025).eval()
    pipe.register_modules(vae=pipe.vae)
    pipe.vae_scale_factor = 8
    pipe.image_processor.config.vae_scale_factor = 8
    return pipe
