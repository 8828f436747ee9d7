"""Random LoRA files for the tiny models, in the formats users download.

Each writer takes peft-style state dicts (`<module>.lora_A.weight` / `.lora_B.weight`, as
`get_peft_model_state_dict` returns them) so one random LoRA can be written in several formats
whose applied updates are equal: that is what lets tests compare the readers with each other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

import torch

__all__ = [
    "random_lora",
    "scaled",
    "save_kohya_sd",
    "save_diffusers_lora",
    "save_kohya_flux",
    "save_prefixed",
    "linear_names",
]


def linear_names(model, *, under: str = "", endings: Iterable[str] = ()) -> list[str]:
    ends = tuple(endings)
    return [n for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and n.startswith(under) and (not ends or n.endswith(ends))]


def random_lora(model, modules: Iterable[str], *, rank: int = 4, seed: int = 0, std: float = 0.3) -> dict[str, torch.Tensor]:
    """peft-named random LoRA for the named Linear modules of `model` (B is not zero, so it acts)."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for name in modules:
        lin = model.get_submodule(name)
        lin = getattr(lin, "base_layer", lin)
        out[f"{name}.lora_A.weight"] = torch.randn(rank, lin.in_features, generator=gen) * std
        out[f"{name}.lora_B.weight"] = torch.randn(lin.out_features, rank, generator=gen) * std
    return out


def scaled(sd: Mapping[str, torch.Tensor], factor: float) -> dict[str, torch.Tensor]:
    """The same LoRA with its update multiplied by `factor` (for formats that store no alpha)."""
    return {k: v * factor if ".lora_B." in k else v for k, v in sd.items()}


def _save(sd: Mapping[str, torch.Tensor], path: Path, metadata: Mapping[str, str] | None = None) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in sd.items()}, str(path), metadata=dict(metadata or {"format": "pt"}))
    return path


def save_kohya_sd(path: Path, unet: Mapping, text_encoders: Mapping[str, Mapping], *, alpha: float, rank: int,
                  unet_config=None) -> Path:
    """kohya file; SD 1.x naming without unet_config, SDXL's SGM naming (lora_te1_/lora_te2_) with it."""
    from lorastudio.models.formats.kohya_lora_sd import kohya_lora_from_peft
    from lorastudio.models.formats.ldm_unet_names import layout_from_unet_config

    if unet_config is None:
        sd = kohya_lora_from_peft(unet, text_encoders, alpha=alpha, rank=rank, unet_naming="diffusers")
    else:
        sd = kohya_lora_from_peft(unet, text_encoders, alpha=alpha, rank=rank, unet_naming="ldm",
                                  layout=layout_from_unet_config(unet_config))
    return _save(sd, path)


def save_diffusers_lora(path: Path, pipeline_class, **layers: Mapping) -> Path:
    """What `pipe.save_lora_weights` writes (e.g. unet_lora_layers=..., text_encoder_lora_layers=...)."""
    import tempfile

    with tempfile.TemporaryDirectory(dir=Path(path).parent) as tmp:
        pipeline_class.save_lora_weights(tmp, weight_name="w.safetensors", **layers)
        Path(tmp, "w.safetensors").replace(path)
    return Path(path)


def save_kohya_flux(path: Path, transformer: Mapping, *, alpha: float, rank: int) -> Path:
    """kohya FLUX.1 file, BFL-named (fused qkv / linear1), as sd-scripts writes it."""
    from lorastudio.models.formats.kohya_lora_flux import kohya_flux_lora_from_peft

    return _save(kohya_flux_lora_from_peft(transformer, None, alpha=alpha, rank=rank), path)


def save_prefixed(path: Path, prefix: str, sd: Mapping, metadata: Mapping[str, str] | None = None) -> Path:
    """peft names under a component prefix, e.g. ai-toolkit's `transformer.` files."""
    return _save({f"{prefix}{k}": v for k, v in sd.items()}, path, metadata)
