"""From a parsed A1111 infotext back to GenerationParams fields (for --from-png and the API)."""

from __future__ import annotations

from typing import Any

from lorastudio.core.infotext import parse_infotext

# A1111 key -> (our field, converter)
_FIELDS: dict[str, tuple[str, Any]] = {
    "Prompt": ("prompt", str),
    "Negative prompt": ("negative_prompt", str),
    "Steps": ("steps", int),
    "Sampler": ("sampler", str),
    "Schedule type": ("scheduler", str),
    "CFG scale": ("cfg_scale", float),
    "Seed": ("seed", int),
    "Size-1": ("width", int),
    "Size-2": ("height", int),
    "Clip skip": ("clip_skip", int),
    "Distilled CFG Scale": ("guidance", float),
    "Guidance": ("guidance", float),
    "Denoising strength": ("denoising_strength", float),
    "VAE": ("vae", str),
}


def params_from_infotext(text: str) -> dict[str, Any]:
    parsed = parse_infotext(text)
    out: dict[str, Any] = {}
    for key, (field, conv) in _FIELDS.items():
        if key in parsed and parsed[key] not in ("", None):
            try:
                out[field] = conv(parsed[key])
            except (TypeError, ValueError):
                continue
    # The hash identifies the exact file; the name is a fallback for renamed-but-equal files.
    name, short = parsed.get("Model", ""), parsed.get("Model hash", "")
    if short:
        out["model"] = f"{name} [{short}]" if name else short
    elif name:
        out["model"] = name
    if out.get("sampler") == "Euler" and parsed.get("Schedule type") == "Simple":
        out["sampler"] = "Euler (flow)"
    return out
