"""Request and response bodies of the A1111 `/sdapi/v1` API, with A1111's field names and defaults.

A1111 builds its request models from the signature of its processing classes, so every field is
optional and clients such as `webuiapi` send all of them, most at their default. We declare the
same fields (A1111 1.10, plus the few Forge additions clients send) so such a request validates;
whether a non-default value can be honoured is decided later, in `a1111_mapping`, which answers
422 naming the field instead of ignoring it.

Unknown fields are refused (extra="forbid") for the same reason: a misspelt option must not turn
into an image made with the default.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lorastudio.core.limits import (
    MAX_BATCH_COUNT,
    MAX_BATCH_SIZE,
    MAX_LABEL_CHARS,
    MAX_PROMPT_CHARS,
    MAX_SIDE,
    MAX_STEPS,
    SEED_MAX,
    ModelRef,
)

_STRICT = ConfigDict(extra="forbid", allow_inf_nan=False, protected_namespaces=())
_OPEN = ConfigDict(allow_inf_nan=False, protected_namespaces=())

# Bounds keep numbers where arithmetic on them cannot overflow; the tighter checks (multiple of 8,
# pixel budget) are GenerationParams' and come back as 422 naming the field.
_SEED = dict(ge=-1, le=SEED_MAX)
_SMALL_INT = dict(ge=-(2**31), le=2**31 - 1)
_FLOAT = dict(ge=-1e6, le=1e6)
MAX_TEXT = MAX_PROMPT_CHARS  # characters in one prompt (core.limits holds every bound)


def reject_non_finite(value: Any, where: str = "value", depth: int = 0) -> Any:
    """NaN/inf hidden inside free-form JSON (override_settings, options) is refused too."""
    if depth > 32:
        raise ValueError(f"{where}: nested too deeply")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where}: must be a finite number, got {value}")
    if isinstance(value, dict):
        for k, v in value.items():
            reject_non_finite(v, f"{where}.{k}", depth + 1)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            reject_non_finite(v, f"{where}[{i}]", depth + 1)
    return value


class _ProcessingRequest(BaseModel):
    """Fields of A1111's StableDiffusionProcessing, shared by txt2img and img2img."""

    model_config = _STRICT

    prompt: str | None = Field("", max_length=MAX_TEXT)
    negative_prompt: str | None = Field("", max_length=MAX_TEXT)
    styles: list[str] | None = None
    seed: int | None = Field(-1, **_SEED)
    subseed: int | None = Field(-1, **_SEED)
    subseed_strength: float | None = Field(0, ge=0, le=1)
    seed_resize_from_h: int | None = Field(-1, ge=-1, le=MAX_SIDE)
    seed_resize_from_w: int | None = Field(-1, ge=-1, le=MAX_SIDE)
    sampler_name: str | None = Field(None, max_length=MAX_LABEL_CHARS)
    scheduler: str | None = Field(None, max_length=MAX_LABEL_CHARS)
    batch_size: int | None = Field(1, ge=1, le=MAX_BATCH_SIZE)
    n_iter: int | None = Field(1, ge=1, le=MAX_BATCH_COUNT)
    steps: int | None = Field(50, ge=1, le=MAX_STEPS)
    cfg_scale: float | None = Field(7.0, ge=0, le=100)
    # A1111's API defaults, whatever the checkpoint: API clients send their sizes. (The CLI, which
    # people type by hand, draws at the checkpoint's native size instead.)
    width: int | None = Field(512, ge=8, le=MAX_SIDE, multiple_of=8,
                              description="Width in pixels; 512 when absent, as in A1111's API, whatever the "
                                          "checkpoint's native size (the CLI uses the native size instead)")
    height: int | None = Field(512, ge=8, le=MAX_SIDE, multiple_of=8,
                               description="Height in pixels; 512 when absent, as in A1111's API, whatever the "
                                           "checkpoint's native size (the CLI uses the native size instead)")
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool | None = False
    do_not_save_grid: bool | None = False
    eta: float | None = Field(None, **_FLOAT)
    s_min_uncond: float | None = Field(None, **_FLOAT)
    s_churn: float | None = Field(None, **_FLOAT)
    s_tmax: float | None = Field(None, **_FLOAT)
    s_tmin: float | None = Field(None, **_FLOAT)
    s_noise: float | None = Field(None, **_FLOAT)
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool | None = True
    refiner_checkpoint: ModelRef | None = None
    refiner_switch_at: float | None = Field(None, ge=0, le=1)
    disable_extra_networks: bool | None = False
    firstpass_image: str | None = None
    comments: dict[str, Any] | None = None
    sampler_index: str | None = Field("Euler", max_length=MAX_LABEL_CHARS)
    script_name: str | None = None
    script_args: list[Any] | None = Field(default_factory=list)
    send_images: bool | None = True
    save_images: bool | None = False
    alwayson_scripts: dict[str, Any] | None = Field(default_factory=dict)
    force_task_id: str | None = Field(None, max_length=MAX_LABEL_CHARS)
    infotext: str | None = Field(None, max_length=MAX_TEXT)

    @field_validator("override_settings", "comments", "alwayson_scripts", "script_args")
    @classmethod
    def _finite_json(cls, v: Any, info) -> Any:
        return reject_non_finite(v, info.field_name)


class Txt2ImgRequest(_ProcessingRequest):
    enable_hr: bool | None = False
    denoising_strength: float | None = Field(0.75, ge=0, le=1)
    firstphase_width: int | None = Field(0, ge=0, le=MAX_SIDE)
    firstphase_height: int | None = Field(0, ge=0, le=MAX_SIDE)
    hr_scale: float | None = Field(2.0, ge=1, le=8)
    hr_upscaler: str | None = Field(None, max_length=MAX_LABEL_CHARS)
    hr_second_pass_steps: int | None = Field(0, ge=0, le=MAX_STEPS)
    hr_resize_x: int | None = Field(0, ge=0, le=MAX_SIDE)
    hr_resize_y: int | None = Field(0, ge=0, le=MAX_SIDE)
    hr_checkpoint_name: ModelRef | None = None
    hr_sampler_name: str | None = Field(None, max_length=MAX_LABEL_CHARS)
    hr_scheduler: str | None = Field(None, max_length=MAX_LABEL_CHARS)
    hr_prompt: str | None = Field("", max_length=MAX_TEXT)
    hr_negative_prompt: str | None = Field("", max_length=MAX_TEXT)
    # Forge additions; distilled_cfg_scale is FLUX-dev's guidance (GenerationParams.guidance).
    distilled_cfg_scale: float | None = Field(None, ge=0, le=100)
    hr_cfg: float | None = Field(None, ge=0, le=100)
    hr_distilled_cfg: float | None = Field(None, ge=0, le=100)
    hr_additional_modules: list[str] | None = None


class Img2ImgRequest(_ProcessingRequest):
    init_images: list[str] | None = None
    resize_mode: int | None = Field(0, ge=0, le=3)
    denoising_strength: float | None = Field(0.75, ge=0, le=1)
    image_cfg_scale: float | None = Field(None, ge=0, le=100)
    mask: str | None = None
    mask_blur_x: int | None = Field(4, ge=0, le=256)
    mask_blur_y: int | None = Field(4, ge=0, le=256)
    mask_blur: int | None = Field(None, ge=0, le=256)
    mask_round: bool | None = True
    inpainting_fill: int | None = Field(0, ge=0, le=3)
    inpaint_full_res: bool | None = True
    inpaint_full_res_padding: int | None = Field(0, ge=0, le=MAX_SIDE)
    inpainting_mask_invert: int | None = Field(0, ge=0, le=1)
    initial_noise_multiplier: float | None = Field(None, ge=0, le=10)
    latent_mask: str | None = None
    include_init_images: bool | None = False
    distilled_cfg_scale: float | None = Field(None, ge=0, le=100)


class GenerationResponse(BaseModel):
    images: list[str] | None = Field(None, description="Generated images, base64 PNG with the infotext")
    parameters: dict[str, Any]
    info: str = Field(description="JSON text: seed, all_seeds, infotexts, sd_model_hash, ...")


class PNGInfoRequest(BaseModel):
    model_config = _STRICT
    image: str = Field(description="Base64 image, optionally as a data: URL")


class PNGInfoResponse(BaseModel):
    info: str
    items: dict[str, Any]
    parameters: dict[str, Any]


class ProgressResponse(BaseModel):
    progress: float
    eta_relative: float
    state: dict[str, Any]
    current_image: str | None = None
    textinfo: str | None = None


class SamplerItem(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, Any]


class SchedulerItem(BaseModel):
    name: str
    label: str
    aliases: list[str] | None = None
    default_rho: float | None = None
    need_inner_model: bool | None = None


class UpscalerItem(BaseModel):
    model_config = _OPEN
    name: str
    model_name: str | None = None
    model_path: str | None = None
    model_url: str | None = None
    scale: float | None = None


class LatentUpscalerModeItem(BaseModel):
    name: str


class SDModelItem(BaseModel):
    model_config = _OPEN
    title: str
    model_name: str
    hash: str | None = None
    sha256: str | None = None
    filename: str
    config: str | None = None


class SDVaeItem(BaseModel):
    model_config = _OPEN
    model_name: str
    filename: str


class LoraItem(BaseModel):
    name: str
    alias: str
    path: str
    metadata: dict[str, Any]


class EmbeddingItem(BaseModel):
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    shape: int
    vectors: int


class EmbeddingsResponse(BaseModel):
    loaded: dict[str, EmbeddingItem]
    skipped: dict[str, EmbeddingItem]


class MemoryResponse(BaseModel):
    ram: dict[str, Any]
    cuda: dict[str, Any]


class ScriptsList(BaseModel):
    txt2img: list[str] | None = None
    img2img: list[str] | None = None
