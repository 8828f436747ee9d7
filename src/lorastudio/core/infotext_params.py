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
    # hires fix (A1111's keys; "Use same ..." is A1111's filler for "not set")
    "Hires upscale": ("hr_scale", float),
    "Hires resize-1": ("hr_resize_x", int),
    "Hires resize-2": ("hr_resize_y", int),
    "Hires steps": ("hr_second_pass_steps", int),
    "Hires upscaler": ("hr_upscaler", str),
    "Hires sampler": ("hr_sampler_name", str),
    "Hires schedule type": ("hr_scheduler", str),
    "Hires prompt": ("hr_prompt", str),
    "Hires negative prompt": ("hr_negative_prompt", str),
    "Hires CFG Scale": ("hr_cfg", float),
    # variation seeds
    "Variation seed": ("subseed", int),
    "Variation seed strength": ("subseed_strength", float),
    "Seed resize from-1": ("seed_resize_from_w", int),
    "Seed resize from-2": ("seed_resize_from_h", int),
}
_UNSET = {"Use same sampler", "Use same scheduler", "Use same checkpoint"}


def params_from_infotext(text: str) -> dict[str, Any]:
    parsed = parse_infotext(text)
    out: dict[str, Any] = {}
    for key, (field, conv) in _FIELDS.items():
        if key in parsed and parsed[key] not in ("", None) and parsed[key] not in _UNSET:
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
    # A1111 fills in "Hires resize: 0x0" for every infotext; the hires fix ran when it wrote its keys.
    if out.get("hr_resize_x") == 0 and out.get("hr_resize_y") == 0:
        out.pop("hr_resize_x"), out.pop("hr_resize_y")
    if "hr_scale" in out or "hr_resize_x" in out or "hr_upscaler" in out:
        out["enable_hr"] = True
    if out.get("sampler") == "Euler" and parsed.get("Schedule type") == "Simple":
        out["sampler"] = "Euler (flow)"
    return out


# A1111's img2img paste fields (infotext key -> Img2ImgOptions field, value -> option value).
_MASKED_CONTENT = {"fill": 0, "original": 1, "latent noise": 2, "latent nothing": 3}
_IMG2IMG_FIELDS: dict[str, tuple[str, Any]] = {
    "Mask blur": ("mask_blur", int),
    "Mask mode": ("inpainting_mask_invert", lambda v: {"Inpaint masked": False, "Inpaint not masked": True}[v]),
    "Masked content": ("inpainting_fill", lambda v: _MASKED_CONTENT[v]),
    "Inpaint area": ("inpaint_full_res", lambda v: {"Whole picture": False, "Only masked": True}[v]),
    "Masked area padding": ("inpaint_full_res_padding", int),
}


def img2img_options_from_infotext(text: str) -> dict[str, Any]:
    """The inpainting settings of an infotext as Img2ImgOptions fields (A1111's defaults for the
    keys it leaves out: whole picture, original content, padding 32, as its parser fills them in)."""
    parsed = parse_infotext(text)
    out: dict[str, Any] = {}
    for key, (field, conv) in _IMG2IMG_FIELDS.items():
        if key in parsed and parsed[key] not in ("", None):
            try:
                out[field] = conv(parsed[key])
            except (KeyError, TypeError, ValueError):
                continue
    return out
