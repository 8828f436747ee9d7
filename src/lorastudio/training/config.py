"""The training run's settings: one typed, versioned model that rejects unknown keys.

Fields left as None take the base model family's defaults (kohya / ai-toolkit / fal values),
resolved once by `resolve_defaults` so that `config.json` records every value actually used.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lorastudio.core.errors import InvalidParameter
from lorastudio.core.limits import (
    MAX_OUTPUT_NAME_BYTES,
    MAX_SAMPLE_PROMPTS,
    MAX_SIDE,
    MAX_TRAINING_STEPS,
    MIN_TRAINING_SIDE,
    SEED_MAX,
    ModelRef,
    Prompt,
    check_path,
)
from lorastudio.core.params import build_model
from lorastudio.training.dataset.config import DatasetConfig, check_colour, parse_colour
from lorastudio.training.dataset.caption_options import CaptionOptions

CONFIG_VERSION = 1

Optimizer = Literal["adamw", "adamw8bit", "lion", "prodigy", "adafactor"]
LrScheduler = Literal["constant", "constant_with_warmup", "cosine", "linear"]
_NAME = re.compile(r"^[^/\\\x00]{1,100}$")


class TrainingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_assignment=True)

    config_version: int = Field(CONFIG_VERSION, ge=1, description="Format of this settings file; a file from a "
                                                                    "newer lorastudio is refused, not misread")
    # --- the three required inputs --------------------------------------------------------
    images: Path = Field(..., description="Folder or .zip of training pictures (+ optional same-name .txt captions)")
    trigger: Prompt = Field(..., description="Trigger word, e.g. DeltamonStamp")
    base: ModelRef = Field(..., description="Base model: name, title, hash or path (.safetensors or diffusers folder)")
    # --- where ---------------------------------------------------------------------------
    project: str | None = Field(None, description="Project name [the trigger word]")
    version: str | None = Field(None, description="Version name [v1, v2, … the next free]")
    projects_dir: Path = Path("projects")
    models_dir: Path = Path("models")
    output_name: str | None = Field(None, description="LoRA file stem [project name]")
    resume: bool = Field(False, description="Continue the version from its last complete checkpoint")
    install_lora: bool = Field(True, description="Copy the finished LoRA into models_dir/Lora (as NAME, or "
                                                 "NAME-v2... when the name is taken) so <lora:NAME:1> works at once")
    # --- length ----------------------------------------------------------------------------
    steps: int | None = Field(None, ge=1, le=MAX_TRAINING_STEPS)
    epochs: int | None = Field(None, ge=1, le=100_000)
    repeats: int | None = Field(None, ge=1, le=10_000)
    batch_size: int = Field(1, ge=1, le=256)
    grad_accum: int = Field(1, ge=1, le=1024)
    # --- network ---------------------------------------------------------------------------
    rank: int | None = Field(None, ge=1, le=1024)
    alpha: float | None = Field(None, gt=0, le=4096)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    train_text_encoder: bool | None = None
    # --- optimisation ----------------------------------------------------------------------
    lr: float | None = Field(None, gt=0, le=10)
    te_lr: float | None = Field(None, gt=0, le=10)
    optimizer: Optimizer = "adamw"
    lr_scheduler: LrScheduler = "constant"
    warmup: int = Field(0, ge=0, le=MAX_TRAINING_STEPS)
    max_grad_norm: float = Field(1.0, ge=0)
    weight_decay: float = Field(1e-2, ge=0)
    # --- loss ------------------------------------------------------------------------------
    min_snr_gamma: float | None = Field(None, gt=0)
    noise_offset: float = Field(0.0, ge=0, le=1)
    masked_loss: bool = False
    timestep_sampling: Literal["uniform", "sigmoid", "shift"] | None = None  # flow-matching families
    discrete_flow_shift: float = Field(3.0, gt=0)
    guidance: float = Field(1.0, ge=0)  # FLUX-dev guidance input during training
    # --- precision and memory ----------------------------------------------------------------
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"
    gradient_checkpointing: bool | None = None
    cache_text_embeddings: bool = True
    # --- checkpoints and samples --------------------------------------------------------------
    save_every: int | None = Field(None, ge=1, le=MAX_TRAINING_STEPS)
    keep_checkpoints: int = Field(3, ge=1, le=10_000)
    sample_every: int | None = Field(None, ge=1, le=MAX_TRAINING_STEPS)
    sample_prompts: list[Prompt] = Field(default_factory=list, max_length=MAX_SAMPLE_PROMPTS)
    sample_steps: int = Field(20, ge=1, le=200)
    sample_seed: int = Field(1234, ge=0, le=SEED_MAX)
    seed: int = Field(42, ge=0, le=2**32 - 1)
    num_processes: int = Field(1, ge=1, le=64)
    # --- dataset -----------------------------------------------------------------------------
    resolution: list[Annotated[int, Field(ge=MIN_TRAINING_SIDE, le=MAX_SIDE)]] | None = Field(None, min_length=1,
                                                                                             max_length=16)
    class_word: Prompt | None = None
    caption_dropout: float = Field(0.0, ge=0, le=1)
    shuffle_tags: bool = False
    keep_tokens: int = Field(1, ge=0)
    skip_bad_images: bool = False
    caption: Literal["given", "auto"] = Field("given", description="auto: caption the pictures with local models "
                                                                   "(caption_options) before training")
    caption_options: CaptionOptions = Field(default_factory=CaptionOptions)
    background: tuple[int, int, int] = Field((255, 255, 255), description="RGB behind transparent pixels: "
                                             "'#rrggbb' or [r, g, b]")
    # --- regularisation (kohya's reg_data_dir, DreamBooth's prior preservation) ---------------
    reg_images: Path | None = Field(None, description="Folder or .zip of pictures of the class without the concept "
                                                      "(captions as written, no trigger): keeps the base's other "
                                                      "prompts as they were")
    prior_loss_weight: float = Field(1.0, gt=0, le=100, description="Loss weight of regularisation pictures")

    @field_validator("resolution", mode="before")
    @classmethod
    def _res(cls, v: Any) -> Any:
        return [v] if isinstance(v, int) else v

    @field_validator("project", "version", "output_name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and (not _NAME.match(v) or v in (".", "..")):
            raise ValueError(f"{v!r} cannot be used as a folder or file name")
        if v is not None and len(v.encode("utf-8", "surrogatepass")) > MAX_OUTPUT_NAME_BYTES:
            raise ValueError(f"is {len(v.encode('utf-8', 'surrogatepass'))} bytes in UTF-8; names of files and "
                             f"folders made from it hold at most {MAX_OUTPUT_NAME_BYTES}")
        return v

    @field_validator("config_version")
    @classmethod
    def _known_version(cls, v: int) -> int:
        # Version 1 is the first format; when a version 2 comes, older files are migrated here.
        if v > CONFIG_VERSION:
            raise ValueError(f"this settings file has format {v}, written by a newer lorastudio; this one reads "
                             f"format {CONFIG_VERSION} and older: upgrade lorastudio, or remove settings it does not know")
        return v

    @field_validator("background", mode="before")
    @classmethod
    def _colour(cls, v: Any) -> Any:
        # Parsed here, once, so every user of the config (the dataset check, the latent cache)
        # sees the same RGB triple.
        return parse_colour(v)

    @field_validator("background")
    @classmethod
    def _colour_range(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        return check_colour(v)

    @field_validator("images", "reg_images", "projects_dir", "models_dir")
    @classmethod
    def _path(cls, v: Path | None) -> Path | None:
        return None if v is None else check_path(v)

    @field_validator("lr", "te_lr", "alpha", "min_snr_gamma", "prior_loss_weight")
    @classmethod
    def _finite(cls, v):
        if v is not None and not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v

    @model_validator(mode="after")
    def _length(self) -> "TrainingConfig":
        if self.steps is not None and self.epochs is not None:
            raise ValueError("give steps or epochs, not both")
        if self.caption == "auto" and self.caption_options.resolved_mode() is None:
            raise ValueError("caption 'auto' needs a tagger and/or a captioner (caption_options.tagger / "
                             "caption_options.captioner, --tagger / --captioner)")
        return self

    def dataset_config(self, default_resolution: int, *, regularisation: bool = False) -> DatasetConfig:
        from lorastudio.training.dataset.config import dataset_config

        return dataset_config(dict(
            add_trigger=not regularisation,
            trigger_word=self.trigger, class_word=self.class_word,
            resolutions=tuple(self.resolution or [default_resolution]),
            caption_dropout=self.caption_dropout, shuffle_tags=self.shuffle_tags, keep_tokens=self.keep_tokens,
            background=self.background, use_alpha_mask=self.masked_loss,
            repeats=1 if regularisation else self.repeats or 1,
        ))


def training_config(data: dict[str, Any] | TrainingConfig) -> TrainingConfig:
    return build_model(TrainingConfig, data)


def load_toml(path: Path) -> TrainingConfig:
    import tomllib

    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InvalidParameter("config", str(path), f"cannot read TOML: {exc}") from None
    base = Path(path).parent
    for key in ("images", "reg_images", "projects_dir", "models_dir"):
        if key in data and not Path(data[key]).is_absolute():
            data[key] = str(base / data[key])
    return training_config(data)
