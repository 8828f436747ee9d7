"""Typed generation settings, validated once at the edge and passed down."""

from __future__ import annotations

import math
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lorastudio.core.errors import InvalidParameter

M = TypeVar("M", bound=BaseModel)

MAX_SIDE = 4096
MAX_BATCH_SIZE = 64
MAX_BATCH_COUNT = 1000
MAX_STEPS = 1000
SEED_MAX = 2**32 - 1


class GenerationParams(BaseModel):
    """What A1111 calls a processing request, minus the UI state."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_assignment=True)

    prompt: str = ""
    negative_prompt: str = ""
    steps: int = Field(20, ge=1, le=MAX_STEPS)
    cfg_scale: float = Field(7.0, ge=0.0, le=100.0)
    sampler: str = "DPM++ 2M"
    scheduler: str = "Automatic"
    seed: int = Field(-1, ge=-1, le=SEED_MAX, description="-1 draws a random seed; the seed used is reported")
    width: int = Field(512, ge=8, le=MAX_SIDE)
    height: int = Field(512, ge=8, le=MAX_SIDE)
    batch_size: int = Field(1, ge=1, le=MAX_BATCH_SIZE)
    batch_count: int = Field(1, ge=1, le=MAX_BATCH_COUNT)
    clip_skip: int = Field(1, ge=1, le=12)
    # FLUX-dev's distilled guidance (Forge: "Distilled CFG Scale"); ignored by families without it.
    guidance: float = Field(3.5, ge=0.0, le=100.0)
    model: str | None = None
    vae: str | None = None
    styles: list[str] = Field(default_factory=list, description="A1111 style names from the styles file, in order")
    # sd-dynamic-prompts syntax ({a|b}, __wildcard__); "off" keeps braces as text
    dynamic_prompts: Literal["off", "random", "combinatorial"] = "off"
    # img2img / inpaint
    denoising_strength: float = Field(0.75, ge=0.0, le=1.0)
    # hires fix (A1111's names; see generation/hires_fix.py)
    enable_hr: bool = False
    hr_scale: float = Field(2.0, ge=1.0, le=8.0)
    hr_second_pass_steps: int = Field(0, ge=0, le=MAX_STEPS)
    hr_upscaler: str = "Latent"
    hr_resize_x: int = Field(0, ge=0, le=MAX_SIDE)
    hr_resize_y: int = Field(0, ge=0, le=MAX_SIDE)
    hr_sampler_name: str | None = None  # None: the first pass's sampler
    hr_scheduler: str | None = None
    hr_prompt: str = ""  # "": the prompt
    hr_negative_prompt: str = ""
    hr_cfg: float | None = Field(None, ge=0.0, le=100.0)  # Forge's "Hires CFG Scale"; None: cfg_scale
    # variation seeds (see generation/variation_seeds.py)
    subseed: int = Field(-1, ge=-1, le=SEED_MAX, description="-1 draws a random variation seed")
    subseed_strength: float = Field(0.0, ge=0.0, le=1.0)
    seed_resize_from_w: int = Field(-1, ge=-1, le=MAX_SIDE)
    seed_resize_from_h: int = Field(-1, ge=-1, le=MAX_SIDE)

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
        if self.width * self.height * self.batch_size > 64 * 1024 * 1024:
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

    # 0 "Just resize", 1 "Crop and resize", 2 "Resize and fill" (3, latent upscale, is not offered)
    resize_mode: int = Field(0, ge=0, le=2)
    mask_blur_x: int = Field(4, ge=0, le=256)
    mask_blur_y: int = Field(4, ge=0, le=256)
    # 0 fill, 1 original, 2 latent noise, 3 latent nothing
    inpainting_fill: int = Field(1, ge=0, le=3)
    inpainting_mask_invert: bool = False


def validate_img2img_options(data: dict[str, Any] | Img2ImgOptions | None) -> Img2ImgOptions:
    return build_model(Img2ImgOptions, {} if data is None else data)


def img2img_steps(steps: int, denoising_strength: float) -> int:
    """Sampling steps A1111 runs for img2img: int(min(strength, 0.999) * steps) + 1.

    That is `setup_img2img_steps` (img2img_fix_steps off) and `launch_sampling(t_enc + 1)`: the
    last t_enc + 1 steps of a `steps`-step schedule. Strength 0 still runs one step, from the
    smallest noise level.
    """
    return int(min(denoising_strength, 0.999) * steps) + 1
