"""Typed dataset settings, validated once where a training run is set up and passed down."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from lorastudio.core.params import build_model

DEFAULT_MAX_PIXELS = 64_000_000
DEFAULT_MAX_UNZIPPED_BYTES = 2 * 1024**3

_HEX_COLOUR = re.compile(r"^#?([0-9a-fA-F]{6})$")


def parse_colour(v: Any) -> Any:
    """'#rrggbb' (or 'rrggbb') -> (r, g, b); anything else is left for the type check."""
    if isinstance(v, str):
        m = _HEX_COLOUR.match(v.strip())
        if not m:
            raise ValueError(f"{v!r} is not a colour like '#ffffff' or [255, 255, 255]")
        h = m.group(1)
        return (int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16))
    return v


def check_colour(v: tuple[int, int, int]) -> tuple[int, int, int]:
    if any(not 0 <= c <= 255 for c in v):
        raise ValueError("each channel must be within 0..255")
    return v


def dataset_config(data: dict[str, Any] | DatasetConfig) -> DatasetConfig:
    return build_model(DatasetConfig, data)


# An RGB triple given as '#rrggbb' or [r, g, b]: parsed once, where the setting is read, so every
# user of the config (the dataset check, the latent cache) sees the same triple.
Colour = Annotated[tuple[int, int, int], BeforeValidator(parse_colour), AfterValidator(check_colour)]


class DatasetConfig(BaseModel):
    """Everything that decides which pictures are used and how they are captioned and cut."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    trigger_word: str = Field(..., description="Stored as typed; escaped for A1111 syntax in captions")
    class_word: str | None = Field(None, description='Added after the trigger in default captions ("sticker")')
    resolutions: tuple[int, ...] = Field((512,), description="One or several base sides, e.g. 512 or [512, 768]")
    bucket_step: int = Field(64, ge=8, le=256, description="Bucket sides are multiples of this [64; 8 when a "
                                                          "resolution is under 256]")
    min_aspect: float = Field(0.25, gt=0, le=1, description="Narrowest bucket, width / height")
    max_aspect: float = Field(4.0, ge=1, le=16, description="Widest bucket, width / height")
    allow_upscale: bool = False
    background: Colour = Field((255, 255, 255), description="RGB behind transparent pixels")
    caption_extensions: tuple[str, ...] = (".txt", ".caption")
    caption_dropout: float = Field(0.0, ge=0.0, le=1.0)
    shuffle_tags: bool = False
    keep_tokens: int = Field(1, ge=0, le=64, description="Leading tags that shuffling never moves")
    min_size: int = Field(64, ge=8, le=4096, description="Shortest side allowed, in pixels [64, or the smallest "
                                                        "resolution when that is smaller]")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=64 * 64, description="Decompression-bomb guard")
    max_unzipped_bytes: int = Field(DEFAULT_MAX_UNZIPPED_BYTES, ge=1)
    repeats: int = Field(1, ge=1, le=10_000, description="Used where no kohya `N_name` folder says otherwise")
    use_alpha_mask: bool = Field(False, description="Mask the loss with the alpha channel of transparent images")
    add_trigger: bool = Field(True, description="Put the trigger first in every caption; off for regularisation "
                                                "pictures, whose captions are used as written")

    @model_validator(mode="before")
    @classmethod
    def _size_rules(cls, data: Any) -> Any:
        # One rule for `dataset check` and `train`: both build their settings here, so a picture
        # one accepts the other accepts too.
        if not isinstance(data, dict):
            return data
        res = data.get("resolutions", (512,))
        res = [res] if isinstance(res, int) else list(res)
        if not res or not all(isinstance(r, int) for r in res):
            return data  # the field validators report it
        data = dict(data)
        if data.get("bucket_step") is None:
            # Small demo models train at 32–128 px where 64-px buckets would leave one bucket only.
            data["bucket_step"] = 64 if min(res) >= 256 else 8
        if data.get("min_size") is None:
            data["min_size"] = min(64, min(res))
        return data

    @field_validator("trigger_word")
    @classmethod
    def _trigger(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        if v != v.strip():
            raise ValueError("must not start or end with whitespace")
        # Captions are comma-separated tags: a comma or newline would split the trigger in two.
        if any(c in v for c in ",\n\r\t"):
            raise ValueError("must not contain commas, tabs or line breaks")
        return v

    @field_validator("class_word")
    @classmethod
    def _class_word(cls, v: str | None) -> str | None:
        if v is None:
            return None
        v = " ".join(v.split())
        if any(c in v for c in ",\n\r"):
            raise ValueError("must not contain commas or line breaks")
        return v or None

    @field_validator("resolutions", mode="before")
    @classmethod
    def _resolutions_list(cls, v: Any) -> Any:
        return (v,) if isinstance(v, int) else v

    @field_validator("resolutions")
    @classmethod
    def _resolutions(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v:
            raise ValueError("needs at least one resolution")
        for r in v:
            if not 16 <= r <= 4096:  # 16: the bundled demo model works at 32 px
                raise ValueError(f"{r} is outside 16..4096")
        # Sorted and de-duplicated so that the same settings always give the same bucket plan.
        return tuple(sorted(set(v)))

    @field_validator("bucket_step")
    @classmethod
    def _step(cls, v: int) -> int:
        # VAEs downsample by 8; anything not a multiple of 8 produces latents of odd shape.
        if v % 8:
            raise ValueError("must be a multiple of 8")
        return v

    @field_validator("caption_extensions", mode="before")
    @classmethod
    def _extensions_list(cls, v: Any) -> Any:
        return (v,) if isinstance(v, str) else v

    @field_validator("caption_extensions")
    @classmethod
    def _extensions(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("needs at least one extension")
        out: list[str] = []
        for ext in v:
            e = ext.strip().lower()
            e = e if e.startswith(".") else "." + e
            if len(e) < 2 or any(c in e[1:] for c in "./\\"):
                raise ValueError(f"{ext!r} is not a file extension like '.txt'")
            if e in (".png", ".jpg", ".jpeg", ".webp", ".bmp"):
                raise ValueError(f"{ext!r} is an image extension")
            if e not in out:
                out.append(e)
        return tuple(out)

    @model_validator(mode="after")
    def _consistent(self) -> "DatasetConfig":
        for r in self.resolutions:
            if r % self.bucket_step:
                raise ValueError(f"resolution {r} is not a multiple of bucket_step={self.bucket_step}")
        if self.min_size < self.bucket_step:
            # A picture narrower than one step cannot fill even the smallest bucket without upscaling.
            raise ValueError(f"min_size={self.min_size} is below bucket_step={self.bucket_step}")
        return self
