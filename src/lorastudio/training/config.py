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
from lorastudio.training.dataset.config import Colour, DatasetConfig
from lorastudio.training.dataset.caption_options import CaptionOptions

CONFIG_VERSION = 1

Optimizer = Literal["adamw", "adamw8bit", "lion", "prodigy", "adafactor"]
LrScheduler = Literal["constant", "constant_with_warmup", "cosine", "linear"]
_NAME = re.compile(r"^[^/\\\x00]{1,100}$")


def _field(default: Any, group: str, description: str, *, cli: Any = None, cli_default: str | None = None,
           **constraints: Any) -> Any:
    """A setting: its default, help section, help text (units, default, kohya's name) and bounds.
    `cli` spells the flag where it differs from the field name (the flags documented in README)."""
    extra: dict[str, Any] = {"group": group}
    if cli is not None:
        extra["cli"] = cli
    if cli_default is not None:
        extra["cli_default"] = cli_default
    if default is list:
        return Field(default_factory=list, description=description, json_schema_extra=extra, **constraints)
    return Field(default, description=description, json_schema_extra=extra, **constraints)


FAMILY = "the base model family's"  # what a None default means: resolved by `resolve_defaults`


class TrainingConfig(BaseModel):
    """Every setting of a run. The help text of each `lorastudio train` flag is the field's
    description, so a new setting is one field here: the CLI, the TOML file, config.json and the
    HTTP API (POST /v1/trainings) read the same model."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_assignment=True, json_schema_extra={
        "cli_groups": ["Inputs", "Dataset", "Network", "Optimizer", "Schedule", "Loss", "Precision and memory",
                       "Saving", "Sampling"]})

    config_version: int = Field(CONFIG_VERSION, ge=1, json_schema_extra={"cli": False},
                                description="Format of this settings file; a file from a newer lorastudio is "
                                            "refused, not misread (a file's property, not a command-line setting)")
    # --- the three required inputs --------------------------------------------------------
    images: Path = _field(..., "Inputs", "Folder or .zip of training pictures (+ optional same-name .txt "
                          "captions) (kohya: train_data_dir)")
    trigger: Prompt = _field(..., "Inputs", "Trigger word, e.g. DeltamonStamp (kohya: the first word of class_tokens)")
    base: ModelRef = _field(..., "Inputs", "Base model: name, title, hash or path (.safetensors or diffusers "
                            "folder) (kohya: pretrained_model_name_or_path)")
    # --- where ---------------------------------------------------------------------------
    project: str | None = _field(None, "Saving", "Project name", cli_default="the trigger word")
    version: str | None = _field(None, "Saving", "Version name", cli_default="v1, v2, ... the next free one")
    projects_dir: Path = _field(Path("projects"), "Saving", "Folder holding the projects")
    models_dir: Path = _field(Path("models"), "Inputs", "A1111/Forge `models` folder the base is looked up in",
                              cli_default="./models or $LORASTUDIO_MODELS_DIR")
    output_name: str | None = _field(None, "Saving", "LoRA file stem (kohya: output_name)",
                                     cli_default="the project name")
    resume: bool = _field(False, "Saving", "Continue the version from its last complete checkpoint")
    install_lora: bool = _field(True, "Saving", "Copy the finished LoRA into models_dir/Lora (as NAME, or "
                                "NAME-v2... when the name is taken) so <lora:NAME:1> works at once", cli="install")
    # --- length ----------------------------------------------------------------------------
    steps: int | None = _field(None, "Schedule", "Optimizer steps to train; give steps or epochs "
                               "(kohya: max_train_steps)", cli_default=FAMILY, ge=1, le=MAX_TRAINING_STEPS)
    epochs: int | None = _field(None, "Schedule", "Passes over the dataset, instead of steps "
                                "(kohya: max_train_epochs)", cli_default="off: --steps decides", ge=1, le=100_000)
    repeats: int | None = _field(None, "Dataset", "Times each picture is seen per epoch (kohya: num_repeats, the "
                                 "N_ folder prefix)", cli_default="1", ge=1, le=10_000)
    batch_size: int = _field(1, "Optimizer", "Pictures per batch (kohya: train_batch_size)", ge=1, le=256)
    grad_accum: int = _field(1, "Optimizer", "Batches accumulated per optimizer step "
                             "(kohya: gradient_accumulation_steps)", ge=1, le=1024)
    # --- network ---------------------------------------------------------------------------
    rank: int | None = _field(None, "Network", "LoRA rank, the size of the low-rank matrices (kohya: network_dim)",
                              cli_default=FAMILY, ge=1, le=1024)
    alpha: float | None = _field(None, "Network", "LoRA alpha; updates are scaled by alpha/rank "
                                 "(kohya: network_alpha)", cli_default=FAMILY, gt=0, le=4096)
    dropout: float = _field(0.0, "Network", "Dropout on the LoRA layers' input, 0 to <1 (kohya: network_dropout)",
                            ge=0.0, lt=1.0)
    train_text_encoder: bool | None = _field(None, "Network", "Also train LoRA layers on the text encoder(s) "
                                             "(kohya: the opposite of network_train_unet_only)",
                                             cli_default=FAMILY)
    lora_modules: Literal["kohya", "attention"] = _field(
        "kohya", "Network", "Layers that get LoRA: kohya = those kohya's networks.lora trains by default (SD: every "
        "linear / 1x1 layer of the transformer blocks: attention, feed-forward, proj_in/out), attention = the "
        "attention projections only")
    conv_dim: int | None = _field(None, "Network", "Rank of LoRA on the 3x3 convolutions too (kohya: conv_dim, "
                                  "LoCon)", cli_default="off", ge=1, le=1024)
    conv_alpha: float | None = _field(None, "Network", "Alpha of the 3x3 convolutions' LoRA (kohya: conv_alpha)",
                                      cli_default="1, as kohya, when --conv-dim is given", gt=0, le=4096)
    # --- optimisation ----------------------------------------------------------------------
    lr: float | None = _field(None, "Optimizer", "Learning rate of the denoiser's LoRA layers "
                              "(kohya: unet_lr / learning_rate)", cli_default=FAMILY, gt=0, le=10)
    te_lr: float | None = _field(None, "Optimizer", "Text-encoder learning rate (kohya: text_encoder_lr)",
                                 cli_default="--lr", gt=0, le=10)
    optimizer: Optimizer = _field("adamw", "Optimizer", "Optimizer (kohya: optimizer_type)")
    lr_scheduler: LrScheduler = _field("constant", "Schedule", "Learning-rate schedule (kohya: lr_scheduler)")
    warmup: int = _field(0, "Schedule", "Warm-up steps of the learning rate (kohya: lr_warmup_steps)",
                         ge=0, le=MAX_TRAINING_STEPS)
    max_grad_norm: float = _field(1.0, "Optimizer", "Gradient clipping norm; 0 turns it off "
                                  "(kohya: max_grad_norm)", ge=0)
    weight_decay: float = _field(1e-2, "Optimizer", "AdamW-style weight decay (kohya: optimizer_args "
                                 "weight_decay)", ge=0)
    # --- loss ------------------------------------------------------------------------------
    min_snr_gamma: float | None = _field(None, "Loss", "Min-SNR loss weighting gamma, e.g. 5; off when not "
                                         "given (kohya: min_snr_gamma)", cli_default="off", gt=0)
    noise_offset: float = _field(0.0, "Loss", "Noise offset, 0 to 1 (kohya: noise_offset)", ge=0, le=1)
    masked_loss: bool = _field(False, "Loss", "Weight the loss by the pictures' alpha channel "
                               "(kohya: masked_loss with alpha_mask)")
    timestep_sampling: Literal["uniform", "sigmoid", "shift"] | None = _field(
        None, "Loss", "Timestep sampling of flow-matching families (kohya: timestep_sampling)",
        cli_default=FAMILY)
    discrete_flow_shift: float = _field(3.0, "Loss", "Shift of the 'shift' timestep sampling "
                                        "(kohya: discrete_flow_shift)", gt=0)
    guidance: float = _field(1.0, "Loss", "Guidance input during training, for flow-matching models that take one "
                              "(kohya: guidance_scale)", ge=0)
    # --- precision and memory ----------------------------------------------------------------
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = _field(
        "auto", "Precision and memory", "Autocast precision; auto = bf16 or fp16 on CUDA, bf16 on CPUs "
        "with AVX512-BF16 or AMX for bases of 1 GiB or more, else no (kohya: mixed_precision)")
    gradient_checkpointing: bool | None = _field(None, "Precision and memory", "Recompute activations in the "
                                                 "backward pass: less memory, slower (kohya: gradient_checkpointing)",
                                                 cli_default="--gradient-checkpointing")
    cache_text_embeddings: bool = _field(True, "Precision and memory", "Encode each caption once, not every "
                                         "step (kohya: cache_text_encoder_outputs)")
    # --- checkpoints and samples --------------------------------------------------------------
    save_every: int | None = _field(None, "Saving", "Save a resumable checkpoint every N steps "
                                    "(kohya: save_every_n_steps)", cli_default="off", ge=1, le=MAX_TRAINING_STEPS)
    keep_checkpoints: int = _field(3, "Saving", "Checkpoints kept; older ones are deleted "
                                   "(kohya counts them in steps: save_last_n_steps)", ge=1, le=10_000)
    samples: bool = _field(True, "Sampling", "Draw previews; --no-samples: none at all, not even the final one")
    sample_every: int | None = _field(None, "Sampling", "Draw the sample prompts every N steps; 0: no previews at "
                                      "all (kohya: sample_every_n_steps)", cli_default="only the final preview",
                                      ge=0, le=MAX_TRAINING_STEPS)
    sample_size: int | None = _field(None, "Sampling", "Side of the previews in pixels",
                                     cli_default="the training resolution", ge=MIN_TRAINING_SIDE, le=MAX_SIDE)
    sample_prompts: list[Prompt] = _field(list, "Sampling", "A prompt drawn during and after training; "
                                          "repeat the flag for several (kohya: sample_prompts)", cli="--sample-prompt",
                                          max_length=MAX_SAMPLE_PROMPTS)
    sample_steps: int = _field(20, "Sampling", "Sampling steps of each sample picture", ge=1, le=200)
    sample_seed: int = _field(1234, "Sampling", "Seed of the sample pictures", ge=0, le=SEED_MAX)
    sample_controlnet: ModelRef | None = _field(None, "Sampling", "ControlNet model (models_dir/ControlNet) the "
                                                "sample pictures follow, e.g. a fixed pose to judge a pose LoRA; "
                                                "needs --sample-control-image", cli_default="none")
    sample_control_image: Path | None = _field(None, "Sampling", "Control picture of the sample pictures",
                                               cli_default="none")
    sample_control_module: str = _field("none", "Sampling", "Preprocessor of the control picture (the ControlNet "
                                        "extension's module: none, canny, invert, openpose...)", max_length=64)
    seed: int = _field(42, "Optimizer", "Seed of the run: LoRA init, noise, timesteps, caption augmentation "
                       "(kohya: seed)", ge=0, le=2**32 - 1)
    num_processes: int = _field(1, "Precision and memory", "Data-parallel processes, one per device "
                                "(accelerate's num_processes)", ge=1, le=64)
    # --- dataset -----------------------------------------------------------------------------
    resolution: list[Annotated[int, Field(ge=MIN_TRAINING_SIDE, le=MAX_SIDE)]] | None = _field(
        None, "Dataset", "Training side in pixels; repeat for several bucket resolutions, e.g. --resolution 512 "
        "--resolution 768 (kohya: resolution)", cli_default="the base model's native size", min_length=1,
        max_length=16)
    class_word: Prompt | None = _field(None, "Dataset", 'Added after the trigger in default captions ("sticker") '
                                       "(kohya: the words after the trigger in class_tokens)", cli_default="none")
    caption_dropout: float = _field(0.0, "Dataset", "Probability of training a step on an empty caption, 0 to 1 "
                                    "(kohya: caption_dropout_rate)", ge=0, le=1)
    shuffle_tags: bool = _field(False, "Dataset", "Shuffle comma-separated caption tags each step, after the "
                                "first --keep-tokens (kohya: shuffle_caption)")
    keep_tokens: int = _field(1, "Dataset", "Leading caption tags kept in place when shuffling or dropping "
                              "(kohya: keep_tokens)", ge=0)
    skip_bad_images: bool = _field(False, "Dataset", "Leave out pictures with problems instead of refusing "
                                   "the dataset")
    caption: Literal["given", "auto"] = _field("given", "Dataset", "auto: caption the pictures without a caption "
                                               "with the local models of --tagger / --captioner first")
    # Set from --tagger / --captioner on the command line (see interfaces/cli/app.py), in full in TOML.
    caption_options: CaptionOptions = Field(default_factory=CaptionOptions, json_schema_extra={"cli": False},
                                            description="Models and thresholds of the automatic captions")
    background: Colour = _field((255, 255, 255), "Dataset", "RGB behind transparent pixels: "
                                              "'#rrggbb' or [r, g, b]", cli_default="#ffffff")
    # --- regularisation (kohya's reg_data_dir, DreamBooth's prior preservation) ---------------
    reg_images: Path | None = _field(None, "Dataset", "Folder or .zip of pictures of the class without the "
                                     "concept (captions as written, no trigger): keeps the base's other prompts "
                                     "as they were (kohya: reg_data_dir)", cli_default="none")
    prior_loss_weight: float = _field(1.0, "Dataset", "Loss weight of regularisation pictures "
                                      "(kohya: prior_loss_weight)", gt=0, le=100)

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

    @field_validator("images", "reg_images", "projects_dir", "models_dir", "sample_control_image")
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
        if (self.sample_controlnet is None) != (self.sample_control_image is None):
            raise ValueError("sample_controlnet and sample_control_image go together (--sample-controlnet, "
                             "--sample-control-image): the previews need a ControlNet model and its picture")
        if self.conv_dim is not None and self.lora_modules == "attention":
            raise ValueError("conv_dim trains the 3x3 convolutions, which lora_modules='attention' leaves out")
        if self.conv_alpha is not None and self.conv_dim is None:
            raise ValueError("conv_alpha is the alpha of conv_dim's layers: give conv_dim too")
        if self.caption == "auto" and self.caption_options.resolved_mode() is None:
            raise ValueError("caption 'auto' needs a tagger and/or a captioner (caption_options.tagger / "
                             "caption_options.captioner, --tagger / --captioner)")
        return self

    @property
    def previews(self) -> bool:
        """Whether any preview is drawn (samples=False and sample_every=0 both turn them off)."""
        return self.samples and self.sample_every != 0

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
    for key in ("images", "reg_images", "projects_dir", "models_dir", "sample_control_image"):
        if key in data and not Path(data[key]).is_absolute():
            data[key] = str(base / data[key])
    return training_config(data)
