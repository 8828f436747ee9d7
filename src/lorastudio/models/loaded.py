"""A base model in memory, with what infotexts and LoRA code need to know about it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorastudio.models.families.base import ModelFamily


@dataclass
class LoadedModel:
    family: ModelFamily
    pipe: Any  # a diffusers DiffusionPipeline
    path: Path
    name: str
    sha256: str | None
    vae_name: str | None = None
    vae_sha256: str | None = None
    own_vae: Any = None  # the checkpoint's VAE while another one from models/VAE is in use
    # The checkpoint's own scheduler config: every sampler is built from it, never from the last one used.
    base_scheduler_config: Any = None

    def __post_init__(self) -> None:
        if self.base_scheduler_config is None:
            self.base_scheduler_config = self.pipe.scheduler.config
