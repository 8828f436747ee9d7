"""Typed generation settings, validated once at the edge and passed down."""

from __future__ import annotations

import math
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lorastudio.core.errors import InvalidParameter
from lorastudio.core.limits import (  # noqa: F401  (re-exported: callers import the bounds from here)
    MAX_BATCH_COUNT,
    MAX_BATCH_SIZE,
    MAX_PIXELS_PER_BATCH,
    MAX_SIDE,
    MAX_STEPS,
    SEED_MAX,
    Label,
    ModelRef,
    Prompt,
)

M = TypeVar("M", bound=BaseModel)


class GenerationParams(BaseModel):
    """What A1111 calls a processing request, minus the UI state."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_assignment=True)

    # The help text of `lorastudio generate` / `img2img` flags is each field's description; `cli`
    # keeps the flag names README documents, `cli: False` keeps a field off the command line.
    prompt: Prompt = Field("", description="Prompt, with A1111 syntax: (word:1.2), [word], BREAK, <lora:name:0.8>",
                           json_schema_extra={"cli": False})  # the commands' positional argument
    negative_prompt: Prompt = Field("", description="Negative prompt", json_schema_extra={"cli": ["--negative", "-n"]})
    steps: int = Field(20, ge=1, le=MAX_STEPS, description="Sampling steps (img2img runs strength x steps + 1 of "
                                                           "them, as A1111)")
    cfg_scale: float = Field(7.0, ge=0.0, le=100.0, description="CFG scale", json_schema_extra={"cli": "--cfg"})
    sampler: Label = Field("DPM++ 2M", description="A1111 sampler name, e.g. 'DPM++ 2M' or 'DPM++ 2M Karras'")
    scheduler: Label = Field("Automatic", description="Schedule type: Automatic, Karras, Exponential, SGM Uniform")
    seed: int = Field(-1, ge=-1, le=SEED_MAX, description="Seed; -1 draws a random one (the seed used is reported)")
    width: int = Field(512, ge=8, le=MAX_SIDE, description="Width, a multiple of 8")
    height: int = Field(512, ge=8, le=MAX_SIDE, description="Height, a multiple of 8")
    batch_size: int = Field(1, ge=1, le=MAX_BATCH_SIZE, description="Images per batch")
    batch_count: int = Field(1, ge=1, le=MAX_BATCH_COUNT, description="Number of batches")
    clip_skip: int = Field(1, ge=1, le=12, description="CLIP skip (A1111 numbering: 1 = none)")
    # FLUX-dev's distilled guidance (Forge: "Distilled CFG Scale"); ignored by families without it.
    guidance: float = Field(3.5, ge=0.0, le=100.0, description="Distilled guidance, for models that take guidance as an input "
                                                                        "(Forge: Distilled CFG Scale)")
    model: ModelRef | None = Field(None, description="Checkpoint name, title, short hash or path",
                                   json_schema_extra={"cli": ["--model", "-m"], "cli_default": "the first one"})
    vae: ModelRef | None = Field(None, description="VAE from models/VAE",
                                 json_schema_extra={"cli_default": "the checkpoint's own"})
    # The fast mode (generation/fast_mode.py): the exact picture within 2/255 per pixel on average,
    # sooner; the infotext is the same, since A1111 has no key for it.
    fast: bool = Field(False, description="Fast mode: lower precision where the device runs it fast, channels_last, "
                                          "prompt encodings kept across requests (within 2/255 of the exact "
                                          "picture on average)")
    # img2img / inpaint
    denoising_strength: float = Field(0.75, ge=0.0, le=1.0, description="0 keeps the image, 1 replaces it",
                                      json_schema_extra={"cli": ["--denoising-strength", "--strength"]})
    styles: list[Label] = Field(default_factory=list, description="A1111 style names from the styles file, in order",
                                json_schema_extra={"cli": "--style"})
    # sd-dynamic-prompts syntax ({a|b}, __wildcard__); "off" keeps braces as text
    dynamic_prompts: Literal["off", "random", "combinatorial"] = Field(
        "off", description="sd-dynamic-prompts templates ({a|b}, __wildcard__): off keeps braces as text")
    # hires fix (A1111's names; see generation/hires_fix.py)
    enable_hr: bool = Field(False, description="Hires fix: a second pass at a larger size",
                            json_schema_extra={"cli": "hires"})
    hr_scale: float = Field(2.0, ge=1.0, le=8.0, description="Hires fix upscale factor")
    hr_second_pass_steps: int = Field(0, ge=0, le=MAX_STEPS, description="Hires fix steps (0 = steps)")
    hr_upscaler: Label = Field("Latent", description="Hires fix upscaler: Latent (and its modes), None, Lanczos, "
                                                     "Nearest, or a model in models/ESRGAN ...")
    hr_resize_x: int = Field(0, ge=0, le=MAX_SIDE, description="Hires fix width (0: from the scale)")
    hr_resize_y: int = Field(0, ge=0, le=MAX_SIDE, description="Hires fix height (0: from the scale)")
    hr_sampler_name: Label | None = Field(None, description="Hires fix sampler", json_schema_extra={
        "cli_default": "the first pass's"})
    hr_scheduler: Label | None = Field(None, description="Hires fix schedule type", json_schema_extra={
        "cli_default": "the first pass's"})
    hr_prompt: Prompt = Field("", description="Hires fix prompt", json_schema_extra={"cli_default": "the prompt"})
    hr_negative_prompt: Prompt = Field("", description="Hires fix negative prompt",
                                       json_schema_extra={"cli_default": "the negative prompt"})
    hr_cfg: float | None = Field(None, ge=0.0, le=100.0, description="Hires fix CFG scale (Forge)",
                                 json_schema_extra={"cli_default": "the CFG scale"})
    # variation seeds (see generation/variation_seeds.py)
    subseed: int = Field(-1, ge=-1, le=SEED_MAX, description="Variation seed; -1 draws a random one")
    subseed_strength: float = Field(0.0, ge=0.0, le=1.0, description="Variation strength: 0 = the seed, 1 = the "
                                                                     "variation seed")
    seed_resize_from_w: int = Field(-1, ge=-1, le=MAX_SIDE, description="Resize seed from width (-1: off)")
    seed_resize_from_h: int = Field(-1, ge=-1, le=MAX_SIDE, description="Resize seed from height (-1: off)")

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, v: int) -> int:
        if v % 8:
            raise ValueError(f"must be a multiple of 8 (nearest: {round(v / 8) * 8})")
        return v

    @field_validator("cfg_scale", "guidance", "denoising_strength", "hr_scale", "subseed_strength")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v

    @model_validator(mode="after")
    def _pixels_bound(self) -> "GenerationParams":
        # A batch of 8 at 4096² already needs tens of GB; refuse before allocating.
        if self.width * self.height * self.batch_size > MAX_PIXELS_PER_BATCH:
            raise ValueError(f"width×height×batch_size = {self.width}×{self.height}×{self.batch_size} is too large")
        return self


def build_model(cls: type[M], data: "dict[str, Any] | M") -> M:
    """`cls(**data)` (an instance passes through), with pydantic's error turned into an
    InvalidParameter that names the field and the value."""
    if isinstance(data, cls):
        return data
    try:
        return cls(**data)
    except ValidationError as exc:
        raise invalid_from_validation(exc) from None


def validate_params(data: dict[str, Any] | GenerationParams) -> GenerationParams:
    return build_model(GenerationParams, data)


def invalid_from_validation(exc: ValidationError) -> InvalidParameter:
    errors = exc.errors()
    first = errors[0]
    field = ".".join(str(p) for p in first["loc"]) or "request"
    why = first["msg"]
    if len(errors) > 1:
        why += f" (and {len(errors) - 1} more problem(s): " + "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors[1:4]
        ) + ")"
    return InvalidParameter(field, first.get("input"), why)


class Img2ImgOptions(BaseModel):
    """The img2img / inpaint settings beyond GenerationParams, with A1111's names and meanings.

    inpainting_fill defaults to 1 ("original"), A1111's UI default; its API defaults to 0
    ("fill"), which the API layer passes explicitly.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    resize_mode: int = Field(0, ge=0, le=3, description="0 just resize, 1 crop and resize, 2 resize and fill, "
                                                        "3 just resize (latent upscale)")
    mask_blur: int | None = Field(None, ge=0, le=256, description="Mask blur in pixels, both directions (sets "
                                  "mask_blur_x and mask_blur_y)", json_schema_extra={"cli_default": "4"})
    mask_blur_x: int = Field(4, ge=0, le=256, description="Horizontal mask blur in pixels",
                             json_schema_extra={"cli": False})
    mask_blur_y: int = Field(4, ge=0, le=256, description="Vertical mask blur in pixels",
                             json_schema_extra={"cli": False})
    inpainting_fill: int = Field(1, ge=0, le=3, description="Masked content: 0 fill, 1 original, 2 latent noise, "
                                                            "3 latent nothing")
    inpainting_mask_invert: bool = Field(False, description="Repaint what the mask does not cover",
                                         json_schema_extra={"cli": "invert-mask"})
    inpaint_full_res: bool = Field(False, description='Inpaint area "Only masked": repaint the masked region '
                                   "(plus padding) at the full width x height, then paste it back",
                                   json_schema_extra={"cli": "only-masked"})
    inpaint_full_res_padding: int = Field(32, ge=0, le=MAX_SIDE, description="Only masked: padding around the "
                                          "masked region, in pixels", json_schema_extra={"cli": "--only-masked-padding"})
    mask_round: bool = Field(True, description="Round the (blurred) mask to 0 / 1 at latent size; off: a soft "
                             "latent mask")

    @model_validator(mode="before")
    @classmethod
    def _both_blurs(cls, data: Any) -> Any:
        # A1111's `mask_blur` is the blur in both directions, unless _x / _y are given.
        if isinstance(data, dict) and data.get("mask_blur") is not None:
            data = {"mask_blur_x": data["mask_blur"], "mask_blur_y": data["mask_blur"], **data}
        return data


def validate_img2img_options(data: dict[str, Any] | Img2ImgOptions | None) -> Img2ImgOptions:
    return build_model(Img2ImgOptions, {} if data is None else data)


def img2img_steps(steps: int, denoising_strength: float) -> int:
    """Sampling steps A1111 runs for img2img: int(min(strength, 0.999) * steps) + 1.

    That is `setup_img2img_steps` (img2img_fix_steps off) and `launch_sampling(t_enc + 1)`: the
    last t_enc + 1 steps of a `steps`-step schedule. Strength 0 still runs one step, from the
    smallest noise level.
    """
    return int(min(denoising_strength, 0.999) * steps) + 1
