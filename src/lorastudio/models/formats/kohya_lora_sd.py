"""SD 1.x / SDXL LoRA weights: peft (as trained on diffusers modules) <-> kohya-ss file format.

kohya names a LoRA after the module it wraps, dots turned into underscores, with a per-component
prefix, and stores `lora_down` (peft's lora_A), `lora_up` (lora_B) and `alpha`; the applied delta is
up @ down * alpha / rank, the same as peft's lora_alpha / r. The module path differs per family:

    SD 1.x  kohya trains the diffusers UNet:  lora_unet_down_blocks_0_attentions_0_..._attn1_to_q
            text encoder:                     lora_te_text_model_encoder_layers_0_self_attn_q_proj
    SDXL    kohya trains the SGM UNet:        lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q
            text encoders:                    lora_te1_text_model_..., lora_te2_text_model_...

This is the format A1111, ComfyUI and diffusers' `load_lora_weights` read.
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping

import torch

from lorastudio.core.errors import LoraError
from lorastudio.models.formats.ldm_unet_names import UNetLayout, diffusers_to_ldm_unet_key

__all__ = ["kohya_lora_from_peft", "peft_from_kohya_lora", "kohya_text_encoder_prefix"]

Tensor = torch.Tensor

_PEFT_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>A|B)(?:\.(?P<adapter>[^.]+))?\.weight$")
_KOHYA_KEY = re.compile(r"^(?P<name>lora_(?:unet|te\d?)_[^.]+)\.(?P<kind>lora_down\.weight|lora_up\.weight|alpha)$")
_UNET_NAMINGS = ("diffusers", "ldm")


def kohya_text_encoder_prefix(component: str, unet_naming: str) -> str:
    """kohya prefix of a text encoder given as a pipeline component or as the prefix itself.

    kohya's SD 1.x trainer (diffusers UNet naming) writes `lora_te_`; its SDXL trainer (SGM naming)
    writes `lora_te1_` / `lora_te2_` even when only the first encoder is trained.
    """
    if component in {"lora_te", "lora_te1", "lora_te2"}:
        return component
    if component == "text_encoder":
        return "lora_te" if unet_naming == "diffusers" else "lora_te1"
    if component == "text_encoder_2":
        return "lora_te2"
    raise LoraError(f"text encoder {component!r}: expected text_encoder, text_encoder_2 or a lora_te* prefix")


def kohya_lora_from_peft(
    unet_lora: Mapping[str, Tensor],
    text_encoders: Mapping[str, Mapping[str, Tensor]],
    *,
    alpha: float,
    rank: int,
    unet_naming: str,
    layout: UNetLayout | None = None,
    overrides: Mapping[str, Mapping[str, tuple[int, float]]] | None = None,
) -> dict[str, Tensor]:
    """kohya state dict from `peft.get_peft_model_state_dict` outputs of the UNet and text encoders.

    text_encoders: {component: state dict}, component "text_encoder"/"text_encoder_2" or the kohya
    prefix ("lora_te", "lora_te1", "lora_te2"). unet_naming: "diffusers" (SD 1.x) or "ldm" (SDXL,
    needs `layout`). alpha and rank are the LoraConfig's lora_alpha and r; overrides
    ({component ("unet", ...): {module path: (rank, alpha)}}) name layers trained at another rank
    (kohya's conv_dim / conv_alpha for 3x3 convolutions).
    """
    overrides = overrides or {}
    if unet_naming not in _UNET_NAMINGS:
        raise LoraError(f"unet_naming={unet_naming!r}: expected one of {_UNET_NAMINGS}")
    if unet_naming == "ldm" and layout is None:
        raise LoraError("unet_naming='ldm' needs the UNet layout (ldm_unet_names.layout_from_unet_config)")

    def unet_name(module: str) -> str:
        path = module if unet_naming == "diffusers" else diffusers_to_ldm_unet_key(module, layout)  # type: ignore[arg-type]
        return "lora_unet_" + path.replace(".", "_")

    out: dict[str, Tensor] = {}
    _export(unet_lora, unet_name, alpha, rank, out, "unet", overrides.get("unet", {}))
    for component, sd in text_encoders.items():
        prefix = kohya_text_encoder_prefix(component, unet_naming)
        _export(sd, lambda m, p=prefix: f"{p}_{_text_model_path(m).replace('.', '_')}", alpha, rank, out, component,
                overrides.get(component, {}))
    return out


def _text_model_path(module: str) -> str:
    # transformers >= 5.6 CLIPTextModel has no `text_model.` level; kohya names always include it
    return module if module.startswith(("text_model.", "text_projection")) else f"text_model.{module}"


def _export(sd: Mapping[str, Tensor], name_of, alpha: float, rank: int, out: dict[str, Tensor], what: str,
            overrides: Mapping[str, tuple[int, float]]) -> None:
    pairs: dict[str, dict[str, Tensor]] = {}
    for key, value in sd.items():
        m = _PEFT_KEY.match(key)
        if not m:
            raise LoraError(f"{what}: {key!r} is not a LoRA A/B weight (DoRA, biases and embeddings are not exported)")
        pairs.setdefault(m["module"], {})[m["ab"]] = value
    for module, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise LoraError(f"{what}: {module} has only lora_{''.join(ab)}")
        down, up = ab["A"], ab["B"]
        module_rank, module_alpha = overrides.get(module, (rank, alpha))
        if down.shape[0] != module_rank or up.shape[1] != module_rank:
            raise LoraError(f"{what}: {module} has rank {down.shape[0]}/{up.shape[1]}, expected r={module_rank}")
        name = name_of(module)
        if f"{name}.lora_down.weight" in out:
            raise LoraError(f"{what}: two modules map to kohya name {name}")
        out[f"{name}.lora_down.weight"] = down
        out[f"{name}.lora_up.weight"] = up
        out[f"{name}.alpha"] = torch.tensor(float(module_alpha), dtype=torch.float32)


def peft_from_kohya_lora(
    kohya_sd: Mapping[str, Tensor],
    *,
    unet_modules: Iterable[str],
    text_encoder_modules: Mapping[str, Iterable[str]],
    unet_naming: str,
    layout: UNetLayout | None = None,
) -> tuple[dict[str, Tensor], dict[str, dict[str, Tensor]], dict[str, float]]:
    """Inverse of `kohya_lora_from_peft`, for resuming or inspecting a kohya file.

    kohya names lose the dots, and module names contain underscores, so the module paths of the
    target models are needed to resolve them (`[n for n, _ in model.named_modules()]`).
    Returns (unet peft state dict, {component: peft state dict}, alphas) where alphas maps
    "unet.<path>" / "<component>.<path>" to the stored alpha (rank is the lora_A row count).
    """
    lookup: dict[str, tuple[str, str]] = {}
    for module in unet_modules:
        path = module
        if unet_naming == "ldm":
            try:
                path = diffusers_to_ldm_unet_key(module, layout)  # type: ignore[arg-type]
            except ValueError:
                continue  # containers such as down_blocks.0 have no kohya name
        lookup["lora_unet_" + path.replace(".", "_")] = ("unet", module)
    for component, modules in text_encoder_modules.items():
        prefix = kohya_text_encoder_prefix(component, unet_naming)
        for module in modules:
            lookup[f"{prefix}_{_text_model_path(module).replace('.', '_')}"] = (component, module)

    unet: dict[str, Tensor] = {}
    tes: dict[str, dict[str, Tensor]] = {c: {} for c in text_encoder_modules}
    alphas: dict[str, float] = {}
    for key, value in kohya_sd.items():
        m = _KOHYA_KEY.match(key)
        if not m:
            raise LoraError(f"{key!r} is not a kohya LoRA key (lora_unet_*/lora_te*_* .lora_down/.lora_up/.alpha)")
        if m["name"] not in lookup:
            raise LoraError(f"{key!r} names no module of the given models")
        component, module = lookup[m["name"]]
        target = unet if component == "unet" else tes[component]
        if m["kind"] == "alpha":
            alphas[f"{component}.{module}"] = float(value.item())
        else:
            ab = "A" if m["kind"].startswith("lora_down") else "B"
            target[f"{module}.lora_{ab}.weight"] = value
    return unet, tes, alphas

