"""Recognising checkpoint files we cannot load yet, so the user hears what the file is.

Each test looks only at the first bytes or at tensor names, the same evidence A1111 / Forge /
ComfyUI use to tell these formats apart:

- GGUF (llama.cpp's container, used by ComfyUI-GGUF / Forge for quantized FLUX): magic `GGUF`.
- bitsandbytes NF4 / FP4 (Forge's `flux1-dev-bnb-nf4`): packed U8 weights with
  `*.quant_state.bitsandbytes__nf4` (or `__fp4`) companions.
- ComfyUI "fp8_scaled": fp8 weights with per-layer `*.scale_weight` (a `scaled_fp8` marker);
  plain fp8 loads, scaled fp8 needs the scales applied.
- SD 2.x: an LDM UNet with the OpenCLIP ViT-H text encoder (`cond_stage_model.model.*`, or
  SGM's `conditioner.embedders.0.model.*` in SD 2.1 Turbo, which has no SDXL `label_emb`).
- SD 3 / 3.5: an MMDiT (`model.diffusion_model.joint_blocks.*`).
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

GGUF_MAGIC = b"GGUF"
_NOT_YET = "is not supported yet"


def identify_by_magic(path: Path) -> str | None:
    """A sentence naming the file's format when its first bytes give away an unsupported one."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return None  # the regular reader reports unreadable files
    if head == GGUF_MAGIC:
        return (f"a GGUF quantized model (llama.cpp container, as used by ComfyUI-GGUF and Forge); GGUF {_NOT_YET}. "
                f"Use a .safetensors version (fp16, bf16 or fp8)")
    return None


def identify_unsupported(keys: Collection[str]) -> str | None:
    """A sentence naming the checkpoint kind when its tensor names show an unsupported one."""
    keys = set(keys)
    for k in keys:
        if ".quant_state.bitsandbytes__" in k:
            kind = k.rsplit("bitsandbytes__", 1)[1].upper()
            return (f"a bitsandbytes {kind} (4-bit) quantized checkpoint (Forge's bnb-{kind.lower()} downloads); "
                    f"{kind} {_NOT_YET}. Use an fp16, bf16 or fp8 version")
    if "scaled_fp8" in keys or any(k.endswith(".scale_weight") for k in keys):
        return (f"a ComfyUI 'fp8_scaled' checkpoint (fp8 weights with per-layer scale_weight); scaled fp8 "
                f"{_NOT_YET}. Plain fp8 files (float8_e4m3fn / float8_e5m2 without scales) load")
    if any(k.startswith("model.diffusion_model.joint_blocks.") for k in keys):
        return f"a Stable Diffusion 3 / 3.5 (MMDiT) checkpoint; SD 3 {_NOT_YET}"
    has_ldm_unet = "model.diffusion_model.input_blocks.0.0.weight" in keys
    open_clip_h = any(k.startswith("cond_stage_model.model.") for k in keys)
    turbo = (any(k.startswith("conditioner.embedders.0.model.") for k in keys)
             and not any(k.startswith("conditioner.embedders.1.") for k in keys)
             and "model.diffusion_model.label_emb.0.0.weight" not in keys)
    if has_ldm_unet and (open_clip_h or turbo):
        return f"a Stable Diffusion 2.x checkpoint (OpenCLIP ViT-H text encoder); SD 2.x {_NOT_YET}"
    return None
