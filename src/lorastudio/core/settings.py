"""Settings built once at an entry point (CLI flags, server options) and passed down.

Only entry points read the environment, and they read it through `default_models_dir`: nothing
below them looks at os.environ, so a library caller gets exactly the settings it passes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
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


PROJECTS_DIR_ENV = "LORASTUDIO_PROJECTS_DIR"


def default_projects_dir(environ: Mapping[str, str]) -> Path:
    """The projects folder when none is given: `$LORASTUDIO_PROJECTS_DIR`, else ./projects."""
    return Path(environ.get(PROJECTS_DIR_ENV, "projects"))


# The projects folder as the server and worker entry points show it (they read the variable).
PROJECTS_DIR_SHOWN = MappingProxyType({"projects_dir": "./projects or $LORASTUDIO_PROJECTS_DIR"})
# What the server and worker entry points read from the environment besides their options' own
# variables (compose.yaml and deploy/ set them; tests/deploy checks that nothing else is set).
ENTRY_POINT_ENV = (MODELS_DIR_ENV, PROJECTS_DIR_ENV)


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
    max_upload_mb: int = Field(2048, ge=1, le=1024 * 1024, description="Largest dataset upload (a zip or a batch "
                               "of pictures) in MiB; other request bodies stay at 64 MiB")
    db: str | None = Field(None, description="Job database: postgresql://... for a queue shared by several API "
                           "nodes and workers (or $LORASTUDIO_DB)", json_schema_extra={
                               "env": "LORASTUDIO_DB", "cli_default": "a SQLite file in the projects folder"})
    worker: bool = Field(True, description="Run trainings in this process; --no-worker only queues them for "
                         "`lorastudio worker` processes")
    artifacts: str | None = Field(None, description="Artifact store the workers upload finished runs to: "
                                  "s3://bucket/prefix or a folder (or $LORASTUDIO_ARTIFACTS); result downloads "
                                  "are read from it", json_schema_extra={
                                      "env": "LORASTUDIO_ARTIFACTS", "cli_default": "the projects folder"})
    s3_endpoint: str | None = Field(None, description="Endpoint of an S3-compatible artifact store (MinIO...), "
                                    "or $LORASTUDIO_S3_ENDPOINT", json_schema_extra={
                                        "env": "LORASTUDIO_S3_ENDPOINT", "cli_default": "AWS"})


class WorkerSettings(BaseModel):
    """How `lorastudio worker` joins a farm: the queue it claims from, what it takes, where runs go.
    Its models, projects folder and device are StudioSettings, as for every other command."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    db: str = Field(description="Job database URL, postgresql://user@host/db (or $LORASTUDIO_DB)",
                    json_schema_extra={"env": "LORASTUDIO_DB"})
    families: str | None = Field(None, description="Comma-separated names of the model families this worker takes",
                                 json_schema_extra={"cli_default": "all"})
    memory_mb: int | None = Field(None, ge=0, description="Accelerator memory on offer; jobs needing more are left "
                                  "to other workers", json_schema_extra={"cli_default": "no limit"})
    worker_id: str | None = Field(None, description="Name in job records", json_schema_extra={
        "cli_default": "host:pid:random"})
    heartbeat_timeout: float = Field(30.0, ge=1.0, description="Seconds without a heartbeat after which a job goes "
                                     "back to the queue (the lease)")
    poll_interval: float = Field(1.0, ge=0.01, description="Seconds between looks at an empty queue")
    artifacts: str | None = Field(None, description="Artifact store for checkpoints and finished runs: "
                                  "s3://bucket/prefix or a folder (or $LORASTUDIO_ARTIFACTS); lets a run resume "
                                  "on another machine and any API node serve its files",
                                  json_schema_extra={"env": "LORASTUDIO_ARTIFACTS", "cli_default": "none"})
    s3_endpoint: str | None = Field(None, description="Endpoint of an S3-compatible artifact store (MinIO...), "
                                    "or $LORASTUDIO_S3_ENDPOINT", json_schema_extra={
                                        "env": "LORASTUDIO_S3_ENDPOINT", "cli_default": "AWS"})
