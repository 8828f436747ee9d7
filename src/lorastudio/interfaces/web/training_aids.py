"""What the page's training form needs beside POST /v1/trainings, each usable without the page:
base models with their family and native size, the TrainingConfig schema the Advanced form is
built from, an estimate, and the samples and loss of a run while it trains."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from lorastudio.core.errors import NotFound
from lorastudio.interfaces.api.security import resolve_inside

router = APIRouter(tags=["training"])

_UUID = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
RequestId = Annotated[str, PathParam(pattern=_UUID)]
# Fields the server sets itself: never shown in the form (POST /v1/trainings refuses them too).
SERVER_FIELDS = ("projects_dir", "models_dir", "images", "config_version", "reg_images")


def _state(request: Request):
    return request.app.state.api


# --- base models ----------------------------------------------------------------------------------
class BaseModelItem(BaseModel):
    title: str = Field(description="A1111 title, accepted as `base` by POST /v1/trainings")
    family: str | None = Field(description="sd1 | sdxl | flux; null when the file is not recognised")
    family_title: str | None
    native_size: int | None = Field(description="the picture size the model was made for")
    preset: dict[str, Any] | None = Field(None, description="the family's training values for fields left empty "
                                          "(rank, lr, steps, resolution...): what a run on this base gets")


@router.get("/v1/base-models", response_model=list[BaseModelItem])
async def base_models(request: Request) -> list[dict]:
    """Checkpoints a training can start from, with the family that decides its defaults."""
    state = _state(request)

    def listing() -> list[dict]:
        out = []
        for entry in state.catalog.checkpoints():
            fam, size = _family_and_size(entry.path)
            preset = fam.training_preset(size) if fam is not None and size and hasattr(fam, "training_preset") else None
            out.append({"title": state.checkpoint_title(entry), "family": fam.name if fam else None,
                        "family_title": fam.title if fam else None, "native_size": size, "preset": preset})
        return out

    return await run_in_threadpool(listing)


def _family_and_size(path: Path):
    """The family claiming a checkpoint and its native size, from the header or model_index.json
    only (no weights read)."""
    from lorastudio.core.errors import LorastudioError
    from lorastudio.interfaces.api.state import safetensors_header
    from lorastudio.models.families.registry import families

    try:
        if path.is_dir():
            index = json.loads((path / "model_index.json").read_text(encoding="utf-8"))
            fam = next((f for f in families() if f.claims_folder(index)), None)
            return fam, fam.default_size if fam else None
        header = safetensors_header(path) if path.suffix == ".safetensors" else None
    except (OSError, ValueError):
        return None, None
    if header is None:
        return None, None
    fam = next((f for f in families() if f.claims_checkpoint(header.tensors.keys())), None)
    if fam is None:
        return None, None
    try:
        size = fam.native_size({k: tuple(t.shape) for k, t in header.tensors.items()}, dict(header.metadata))
    except (LorastudioError, KeyError, ValueError, TypeError):
        size = fam.default_size
    return fam, size


# --- taggers and captioners ------------------------------------------------------------------------
class InterrogatorItem(BaseModel):
    name: str = Field(description="accepted as `tagger` / `captioner` by POST /v1/datasets/caption")
    kind: Literal["tagger", "captioner"] = Field(description="tagger: a WD14 folder (model.onnx + "
                                                 "selected_tags.csv); captioner: a transformers folder")


@router.get("/v1/interrogators", response_model=list[InterrogatorItem])
async def interrogators(request: Request) -> list[dict]:
    """The tagger and captioner folders under models/interrogators/ (nothing is downloaded)."""
    from lorastudio.training.dataset.interrogators import interrogators_dir

    def listing() -> list[dict]:
        folder = interrogators_dir(_state(request).settings.models_dir)
        out = []
        for sub in sorted(folder.iterdir()) if folder.is_dir() else []:
            if (sub / "model.onnx").is_file() and (sub / "selected_tags.csv").is_file():
                out.append({"name": sub.name, "kind": "tagger"})
            elif (sub / "config.json").is_file():
                out.append({"name": sub.name, "kind": "captioner"})
        return out

    return await run_in_threadpool(listing)


# --- the training form ----------------------------------------------------------------------------
@router.get("/v1/training-config/schema")
async def training_config_schema() -> dict[str, Any]:
    """TrainingConfig's JSON schema without the fields the server sets: the page builds its
    Advanced form from it, and POST /v1/trainings validates with the same model."""
    from lorastudio.training.config import TrainingConfig

    schema = TrainingConfig.model_json_schema()
    for key in SERVER_FIELDS:
        schema.get("properties", {}).pop(key, None)
    schema["required"] = [k for k in schema.get("required", []) if k not in SERVER_FIELDS]
    return schema


class EstimateRequest(BaseModel):
    base: str = Field(max_length=1000)
    steps: int | None = Field(None, ge=1, le=1_000_000)
    batch_size: int = Field(1, ge=1, le=256)
    resolution: int | None = Field(None, ge=8, le=8192)
    rank: int | None = Field(None, ge=1, le=1024, description="LoRA rank [the family's preset]")
    optimizer: str = Field("adamw", max_length=40)
    gradient_checkpointing: bool = True
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"


class MemoryOut(BaseModel):
    weights_bytes: int
    lora_bytes: int
    optimizer_bytes: int
    activations_bytes: int
    total_bytes: int
    lora_params: int
    device: str = Field(description="where it was estimated for: cpu or an accelerator")
    dtype: str


class Estimate(BaseModel):
    seconds: float | None = Field(description="estimated training time; null when nothing was measured yet")
    seconds_per_step: float | None
    source: str = Field(description="last_run: measured on this server's last finished run with this base at "
                                    "this batch size and resolution; none: no such run yet")
    model_bytes: int | None = Field(description="size of the base model's weights, all loaded for training")
    memory: MemoryOut | None = Field(None, description="an estimate (not a measurement) of the memory the run "
                                     "needs: weights + LoRA and optimizer states + activations; null when the "
                                     "base's tensors cannot be read from its header")


@router.post("/v1/training-estimate", response_model=Estimate)
async def training_estimate(request: Request, body: EstimateRequest) -> dict:
    """Time from the last finished run on this server with the same base, batch size and
    resolution (a measured step on this machine); memory from the base's weights."""
    state = _state(request)

    def estimate() -> dict:
        entry = state.checkpoint_entry(body.base, "base")
        per_step = None
        for job in reversed(state.store.list(kind="training")):
            cfg = job.payload.get("config") or {}
            res = cfg.get("resolution")
            res = res[0] if isinstance(res, list) and res else res
            steps = (job.result or {}).get("steps")
            if (job.status.value != "COMPLETED" or not steps or job.started_at is None or job.finished_at is None
                    or Path(cfg.get("base", "")).resolve() != entry.path.resolve()
                    or int(cfg.get("batch_size") or 1) != body.batch_size
                    or (body.resolution is not None and res not in (None, body.resolution))):
                continue
            per_step = (job.finished_at - job.started_at).total_seconds() / steps
            break
        size = entry.path.stat().st_size if entry.path.is_file() else \
            sum(p.stat().st_size for p in entry.path.rglob("*.safetensors"))
        return {"seconds": per_step * body.steps if per_step is not None and body.steps else None,
                "seconds_per_step": per_step, "source": "last_run" if per_step is not None else "none",
                "model_bytes": size, "memory": _memory(state, entry.path, body)}

    return await run_in_threadpool(estimate)


def _memory(state, path: Path, body: EstimateRequest) -> dict | None:
    from lorastudio.core.errors import InvalidParameter
    from lorastudio.interfaces.api.state import safetensors_header
    from lorastudio.models.devices import pick_device
    from lorastudio.training.memory_estimate import (OPTIMIZER_STATE_BYTES, estimate_memory, lora_parameter_count,
                                                     parameter_count)

    if body.optimizer not in OPTIMIZER_STATE_BYTES:
        raise InvalidParameter("optimizer", body.optimizer, f"expected one of {', '.join(OPTIMIZER_STATE_BYTES)}")
    fam, size = _family_and_size(path)
    files = sorted(path.rglob("*.safetensors")) if path.is_dir() else [path]
    shapes: dict[str, tuple[int, ...]] = {}
    for i, f in enumerate(files):
        header = safetensors_header(f) if f.suffix == ".safetensors" else None
        if header is None:
            return None
        shapes.update({f"{i}:{k}": tuple(t.shape) for k, t in header.tensors.items()})
    if fam is None or not size or not hasattr(fam, "training_preset"):
        return None
    preset = fam.training_preset(size)
    device = pick_device(state.settings.device)
    dtype = {"fp16": "float16", "bf16": "bfloat16", "no": "float32"}.get(body.mixed_precision) or \
        fam.preferred_dtype(device)
    rank = body.rank or preset["rank"]
    resolution = body.resolution or preset["resolution"][0]
    # Gradient checkpointing is applied on accelerators only (training/loop.py).
    checkpointing = body.gradient_checkpointing and device != "cpu"
    est = estimate_memory(params=parameter_count(shapes.values()), lora_params=lora_parameter_count(shapes, rank),
                          dtype=dtype, optimizer=body.optimizer, batch_size=body.batch_size, resolution=resolution,
                          native_size=size, gradient_checkpointing=checkpointing)
    return {**est.as_dict(), "device": "cpu" if device == "cpu" else "accelerator", "dtype": dtype}


# --- samples of a running training ------------------------------------------------------------------
class SampleItem(BaseModel):
    name: str
    url: str
    step: int | None


def _version_dir(state, job) -> Path | None:
    from lorastudio.training.project import version_dir

    project, version = job.progress.get("project"), job.progress.get("version")
    if not project or not version:
        return None
    return version_dir(state.projects_root, project, version, resume=True).root


@router.get("/v1/trainings/{request_id}/samples", response_model=list[SampleItem])
async def training_samples(request: Request, request_id: RequestId) -> list[dict]:
    """Preview samples written so far (while the training runs, too), oldest first."""
    state = _state(request)
    job = await run_in_threadpool(state.store.get, request_id)
    root = _version_dir(state, job)
    if root is None or not (root / "samples").is_dir():
        return []
    out = []
    for path in sorted((root / "samples").glob("*.png")):
        step = path.stem.split("-")[1] if path.stem.startswith("step-") else None
        out.append({"name": path.name, "step": int(step) if step and step.isdigit() else None,
                    "url": str(request.url_for("training_sample", request_id=request_id, name=path.name))})
    return out


@router.get("/v1/trainings/{request_id}/samples/{name}", name="training_sample", response_class=FileResponse)
async def training_sample(request: Request, request_id: RequestId, name: str = PathParam(max_length=255)):
    state = _state(request)
    job = await run_in_threadpool(state.store.get, request_id)
    root = _version_dir(state, job)
    if root is None or not name.endswith(".png"):
        raise NotFound("sample", name)
    path = resolve_inside(name, [root / "samples"], field="name", base=root / "samples")
    if not path.is_file():
        raise NotFound("sample", name)
    return FileResponse(path, media_type="image/png")


class MetricPoint(BaseModel):
    step: int
    loss: float | None
    smoothed: float | None = None


@router.get("/v1/trainings/{request_id}/metrics", response_model=list[MetricPoint])
async def training_metrics(request: Request, request_id: RequestId) -> list[dict]:
    """The loss per step so far (the run's logs/metrics.jsonl), for a loss chart."""
    state = _state(request)
    job = await run_in_threadpool(state.store.get, request_id)
    root = _version_dir(state, job)
    path = root / "logs" / "metrics.jsonl" if root is not None else None
    if path is None or not path.is_file():
        return []

    def read() -> list[dict]:
        out = []
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
                out.append({"step": int(row["step"]), "loss": _finite(row.get("loss")),
                            "smoothed": _finite(row.get("smoothed"))})
            except (ValueError, KeyError, TypeError):
                continue  # a line being written while we read
        return out

    return await run_in_threadpool(read)


def _finite(value) -> float | None:
    import math

    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None
