"""Settings built once at an entry point (CLI flags, server options) and passed down.

Only entry points read the environment, and they read it through `default_models_dir`: nothing
below them looks at os.environ, so a library caller gets exactly the settings it passes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lorastudio.core.limits import check_path


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
    report_after_training: bool = Field(True, description="Write the LoRA report (weight sweep) after every training")

    @field_validator("models_dir", "outdir", "projects_dir")
    @classmethod
    def _fits_the_filesystem(cls, v: Path) -> Path:
        return check_path(v)


MODELS_DIR_ENV = "LORASTUDIO_MODELS_DIR"


def default_models_dir(environ: Mapping[str, str]) -> Path:
    """The models folder when none is given: `$LORASTUDIO_MODELS_DIR`, else ./models."""
    return Path(environ.get(MODELS_DIR_ENV, "models"))
