"""Settings built once at an entry point (CLI flags, server options) and passed down."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class StudioSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    models_dir: Path = Field(Path("models"), description="An A1111/Forge `models` folder (or the webui folder)")
    outdir: Path = Field(Path("outputs"), description="Where generated images go (A1111 layout)")
    projects_dir: Path = Field(Path("projects"), description="Training projects")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N | mps")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    lora_mode: Literal["fused", "unfused"] = Field(
        "fused", description="fused: merge LoRA weights into the model (fast); unfused: keep adapters separate")
    lora_cache_size: int = Field(
        4, ge=0, le=64, description="LoRAs kept loaded while no prompt uses them (least recently used ones are "
                                    "unloaded past this)")
    allow_pickle: bool = Field(False, description="Load .ckpt/.pt files with torch.load(weights_only=True)")
    include_bundled: bool = Field(True, description="List the bundled demo base model beside the user's models")
    wildcards_dir: Path | None = Field(None, description="sd-dynamic-prompts wildcards (default: <models_dir>/wildcards)")
    styles_file: Path = Field(Path("styles.csv"), description="A1111's prompt styles file (name, prompt, negative_prompt)")
