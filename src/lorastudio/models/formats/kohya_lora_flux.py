"""Kohya (sd-scripts `networks/lora_flux.py`) FLUX.1 LoRA files from peft LoRAs trained on diffusers.

Training happens on diffusers' FluxTransformer2DModel (separate q, k, v, proj_mlp linears); the files
users share name modules after BFL's layout, which fuses them:

    lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight   [rank, in]
    lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight     [out, rank]
    lora_unet_double_blocks_0_img_attn_qkv.alpha              0-d tensor, the LoRA's alpha
    lora_te1_text_model_encoder_layers_0_self_attn_q_proj.*   CLIP-L

A kohya module's update is up @ down * alpha / rank, rank being down's row count. That is the format
A1111/Forge, ComfyUI, kohya and diffusers' `load_lora_weights` read.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Mapping

from lorastudio.core.errors import LoraError
from lorastudio.models.formats.flux_checkpoint import FluxLinear, flux_linears, swap_halves

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["kohya_flux_lora_from_peft", "LORA_UNET_PREFIX", "LORA_TE1_PREFIX"]

LORA_UNET_PREFIX = "lora_unet_"
LORA_TE1_PREFIX = "lora_te1_"
# peft keys: <module>.lora_A.weight, optionally with the adapter name or a wrapper prefix left in
_PEFT_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")
_BLOCK = re.compile(r"^(transformer_blocks|single_transformer_blocks)\.(\d+)\.")
# diffusers' reader of these files (lora_conversion_utils) ignores `.alpha` of final_layer modules
# and loads them at scale 1, so for those the scale goes into the weights instead (see below)
_FOLDED = ("final_layer.",)


def kohya_flux_lora_from_peft(
    transformer_lora: Mapping[str, "Tensor"],
    clip_lora: Mapping[str, "Tensor"] | None,
    *,
    alpha: float,
    rank: int,
) -> dict[str, "Tensor"]:
    """peft LoRA state dicts (`get_peft_model_state_dict`) of the FLUX transformer and, optionally,
    the CLIP-L text encoder -> a kohya FLUX.1 LoRA state dict.

    Every module must have been trained with the same `rank` and `alpha` (peft's r / lora_alpha).
    Raises LoraError for anything that has no place in a kohya FLUX LoRA.
    """
    if rank <= 0:
        raise LoraError(f"rank={rank}: must be positive")
    modules = _modules(transformer_lora, rank, "transformer LoRA")
    modules = {(m[len("transformer."):] if m.startswith("transformer.") else m): ab for m, ab in modules.items()}
    out: dict[str, Tensor] = {}
    used: set[str] = set()
    for lin in flux_linears(_count(modules, "transformer_blocks"), _count(modules, "single_transformer_blocks"), True):
        present = [p for p in lin.parts if p in modules]
        if not present:
            continue
        down, up, fused_alpha = _fuse(lin, present, modules, alpha, rank)
        if lin.swapped:
            up = swap_halves(up)
        if lin.bfl.startswith(_FOLDED):
            down, fused_alpha = down * (fused_alpha / down.shape[0]), float(down.shape[0])
        _put(out, LORA_UNET_PREFIX + lin.bfl.replace(".", "_"), down, up, fused_alpha)
        used.update(present)
    unused = sorted(set(modules) - used)
    if unused:
        raise LoraError(f"transformer LoRA: {len(unused)} modules have no FLUX.1 (BFL) counterpart, e.g. {unused[:3]}")
    for module, (down, up) in _modules(clip_lora or {}, rank, "CLIP-L LoRA").items():
        # transformers >= 5.6 flattened CLIPTextModel; kohya names keep the `text_model.` level
        path = module if module.startswith("text_model.") else f"text_model.{module}"
        _put(out, LORA_TE1_PREFIX + path.replace(".", "_"), down, up, float(alpha))
    return out


def _modules(sd: Mapping[str, "Tensor"], rank: int, what: str) -> dict[str, tuple["Tensor", "Tensor"]]:
    halves: dict[str, dict[str, Tensor]] = {}
    for key, value in sd.items():
        m = _PEFT_KEY.match(key)
        if not m:
            raise LoraError(f"{what}: {key!r} is not a plain LoRA weight (DoRA, biases and embeddings are not supported)")
        halves.setdefault(m["module"], {})[m["ab"]] = value
    out = {}
    for module, ab in halves.items():
        if set(ab) != {"A", "B"}:
            raise LoraError(f"{what}: {module} has lora_{''.join(ab)} only")
        if ab["A"].shape[0] != rank or ab["B"].shape[1] != rank:
            raise LoraError(f"{what}: {module} has rank {ab['A'].shape[0]}, expected {rank}")
        out[module] = (ab["A"], ab["B"])
    return out


def _count(modules: Mapping[str, object], kind: str) -> int:
    return 1 + max((int(m[2]) for k in modules if (m := _BLOCK.match(k)) and m[1] == kind), default=-1)


def _fuse(
    lin: FluxLinear, present: list[str], modules: Mapping[str, tuple["Tensor", "Tensor"]], alpha: float, rank: int
) -> tuple["Tensor", "Tensor", float]:
    """One LoRA for a fused BFL linear from LoRAs on some or all of its diffusers parts.

    With parts p_1..p_n of rank r each, the fused LoRA has rank n*r: down stacks the downs
    [d_1; ...; d_n], up is block-diagonal (u_j in part j's rows and in columns j*r..(j+1)*r,
    zeros elsewhere, including whole rows for parts without a LoRA). Then up @ down stacks
    u_j @ d_j per part, exactly the separate updates. Their scale was alpha / r; the fused file's
    scale is alpha' / (n*r), so alpha' = n * alpha keeps every part's update unchanged.
    """
    import torch

    if len(lin.parts) == 1:
        down, up = modules[present[0]]
        return down, up, float(alpha)
    sizes = _part_rows(lin, present, modules)
    downs = [modules[p][0] for p in present]
    ref_up = modules[present[0]][1]
    up = torch.zeros(sum(sizes), rank * len(present), dtype=ref_up.dtype, device=ref_up.device)
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    for j, part in enumerate(present):
        i = lin.parts.index(part)
        up[starts[i] : starts[i] + sizes[i], j * rank : (j + 1) * rank] = modules[part][1]
    return torch.cat(downs, dim=0), up, float(alpha) * len(present)


def _part_rows(lin: FluxLinear, present: list[str], modules: Mapping[str, tuple["Tensor", "Tensor"]]) -> list[int]:
    """Output rows of each part of a fused linear, including parts that carry no LoRA.

    Attention parts share one width; a single block's MLP part is 4x that width (diffusers builds
    FLUX single blocks with mlp_ratio 4), which is all that is needed when a part is absent.
    """
    known = {p: modules[p][1].shape[0] for p in present}
    attn = next((known[p] for p in lin.parts[:3] if p in known), None)
    if attn is None:  # only proj_mlp of a single block
        attn = known[lin.parts[3]] // 4
    rows = [known.get(p, attn) for p in lin.parts[:3]]
    if len(lin.parts) == 4:
        rows.append(known.get(lin.parts[3], 4 * attn))
    return rows


def _put(out: dict[str, "Tensor"], name: str, down: "Tensor", up: "Tensor", alpha: float) -> None:
    import torch

    out[f"{name}.lora_down.weight"] = down.contiguous()
    out[f"{name}.lora_up.weight"] = up.contiguous()
    out[f"{name}.alpha"] = torch.tensor(alpha, dtype=torch.float32)
