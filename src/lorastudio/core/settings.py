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

    models_dir: Path = Field(Path("models"), description="An A1111/Forge `models` folder (or the webui folder)",
                             json_schema_extra={"cli_default": "./models or $LORASTUDIO_MODELS_DIR"})
    outdir: Path = Field(Path("outputs"), description="Where generated images go (A1111 layout)")
    projects_dir: Path = Field(Path("projects"), description="Training projects")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N | mps")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="Weights' dtype; auto = the model family's preferred one on a GPU, float32 on the CPU")
    lora_mode: Literal["fused", "unfused"] = Field(
        "fused", description="fused: merge LoRA weights into the model (fast); unfused: keep adapters separate")
    lora_cache_size: int = Field(
        4, ge=0, le=64, description="LoRAs kept loaded while no prompt uses them (least recently used ones are "
                                    "unloaded past this)")
    fast_compile: Literal["auto", "on", "off"] = Field(
        "auto", description="Fast mode: torch.compile the denoiser's repeated blocks (auto = on CUDA GPUs only: "
                            "compiling on a CPU takes minutes that a few images do not earn back)")
    allow_pickle: bool = Field(False, description="Load .ckpt/.pt files with torch.load(weights_only=True)")
    include_bundled: bool = Field(True, description="List the bundled demo base model beside the user's models")
    report_after_training: bool = Field(True, description="Write the LoRA report (weight sweep) after every training",
                                        json_schema_extra={"cli": "report"})

    wildcards_dir: Path | None = Field(None, description="sd-dynamic-prompts wildcards (default: <models_dir>/wildcards)")
    styles_file: Path = Field(Path("styles.csv"), description="A1111's prompt styles file (name, prompt, negative_prompt)")

    @field_validator("models_dir", "outdir", "projects_dir")
    @classmethod
    def _fits_the_filesystem(cls, v: Path) -> Path:
        return check_path(v)


MODELS_DIR_ENV = "LORASTUDIO_MODELS_DIR"


def default_models_dir(environ: Mapping[str, str]) -> Path:
    """The models folder when none is given: `$LORASTUDIO_MODELS_DIR`, else ./models."""
    return Path(environ.get(MODELS_DIR_ENV, "models"))


class ServerSettings(BaseModel):
    """How `lorastudio serve` and `python -m lorastudio.interfaces.api` listen and what they allow;
    both take their options from this model (and StudioSettings), so they cannot drift apart."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", description="Address to listen on; anything but loopback needs --api-auth")
    port: int = Field(7860, ge=1, le=65535, description="Port (A1111's default)")
    # Also read from the environment so a password need not appear in the process list.
    api_auth: str | None = Field(None, description="USER:PASS for HTTP Basic auth on every route (or "
                                 "$LORASTUDIO_API_AUTH, kept out of the process list)",
                                 json_schema_extra={"env": "LORASTUDIO_API_AUTH", "cli_default": "none"})
    webhook_hosts: list[str] = Field(default_factory=list, description="Host allowed as a webhook target of "
                                     "POST /v1/trainings", json_schema_extra={"cli": "--webhook-host"})
    dataset_roots: list[Path] = Field(default_factory=list, description="Folder whose datasets may be named by "
                                      "path in POST /v1/trainings", json_schema_extra={"cli": "--dataset-root"})
    max_generation_work: int | None = Field(None, ge=1, description="Refuse txt2img/img2img requests above "
                                            "steps x width x height x images", json_schema_extra={"cli_default":
                                                                                                    "no limit"})
    db: str | None = Field(None, description="Job database: postgresql://... for a queue shared by several API "
                           "nodes and workers (or $LORASTUDIO_DB)", json_schema_extra={
                               "env": "LORASTUDIO_DB", "cli_default": "a SQLite file in the projects folder"})
    worker: bool = Field(True, description="Run trainings in this process; --no-worker only queues them for "
                         "`lorastudio worker` processes")
