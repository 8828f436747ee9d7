"""`/v1/trainings`: a fal-style queue of LoRA trainings, kept in SQLite so it survives restarts."""

from __future__ import annotations

import asyncio
import json
import mimetypes
import shutil
import time
import uuid
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel

from lorastudio.core.errors import DatasetError, InvalidParameter, NotFound, raise_if_disk_full
from lorastudio.interfaces.api.a1111_models import reject_non_finite
from lorastudio.interfaces.api.public_text import public_text, server_roots
from lorastudio.interfaces.api.security import check_webhook_url, resolve_inside
from lorastudio.services.artifacts.store import check_key

router = APIRouter(prefix="/v1/trainings", tags=["training"])

_UUID = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
_SERVER_FIELDS = ("projects_dir", "models_dir")
SSE_POLL_S = 0.5
SSE_NOTIFY_WAIT_S = 2.0
SSE_KEEPALIVE_S = 15.0

# Keys of a field's json_schema_extra that only shape the command line (options_from_model.py).
_CLI_KEYS = ("cli", "group", "cli_default", "env")


def _config_doc() -> dict:
    """The JSON body's schema: TrainingConfig's own fields and descriptions (the CLI's help texts),
    less the folders the server decides, plus webhook_url."""
    from lorastudio.training.config import TrainingConfig

    schema = TrainingConfig.model_json_schema()
    props = {name: {k: v for k, v in prop.items() if k not in _CLI_KEYS}
             for name, prop in schema["properties"].items() if name not in _SERVER_FIELDS}
    props["webhook_url"] = {"type": "string", "description": "http(s) URL called when the training ends; its "
                                                             "host must be one the server allows (--webhook-host)"}
    return {"type": "object", "title": "TrainingRequest", "additionalProperties": False, "properties": props,
            "description": "TrainingConfig fields; images is a folder or .zip path on the server",
            "required": list(schema.get("required", []))}


_CONFIG_DOC = _config_doc()
_SUBMIT_DOC = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": _CONFIG_DOC},
    "multipart/form-data": {"schema": {"type": "object", "required": ["images", "config"], "properties": {
        "images": {"type": "string", "format": "binary", "description": ".zip of pictures (+ .txt captions)"},
        "config": {"type": "string", "description": "JSON object of TrainingConfig fields, without images"},
        "webhook_url": {"type": "string"}}}},
}}}


class SubmitResponse(BaseModel):
    request_id: str
    status: str
    status_url: str
    result_url: str
    cancel_url: str
    events_url: str


def _state(request: Request):
    return request.app.state.api


def _urls(request: Request, job_id: str) -> dict[str, str]:
    return {name: str(request.url_for(route, request_id=job_id)) for name, route in (
        ("status_url", "training_status"), ("result_url", "training_result"),
        ("cancel_url", "training_cancel"), ("events_url", "training_events"))}


# --- submit ---------------------------------------------------------------------------------------
@router.post("", status_code=202, response_model=SubmitResponse, openapi_extra=_SUBMIT_DOC)
async def submit_training(request: Request) -> dict:
    state = _state(request)
    ctype = request.headers.get("content-type", "").lower()
    upload_dir: Path | None = None
    if ctype.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=16)
        try:
            fields = _json_object(form.get("config") or "{}", "config")
            if "webhook_url" in form:
                fields["webhook_url"] = form.get("webhook_url")
            upload = form.get("images")
            if upload is None or isinstance(upload, str):
                raise InvalidParameter("images", None, "attach the dataset as a .zip file part named 'images'")
            if "images" in fields:
                raise InvalidParameter("config.images", fields["images"], "the images come from the uploaded zip")
            upload_dir = state.uploads_root / uuid.uuid4().hex
            images = await run_in_threadpool(_store_zip, upload.file, upload_dir, state.limits.max_unzipped_bytes)
        finally:
            await form.close()
    elif ctype.startswith("application/json"):
        try:
            fields = _json_object((await request.body()).decode("utf-8", "replace"), "body")
        except UnicodeDecodeError:
            raise InvalidParameter("body", "...", "not UTF-8 JSON") from None
        if not isinstance(fields.get("images"), str):
            raise InvalidParameter("images", fields.get("images"), "a folder or .zip path on the server is required")
        images = resolve_inside(fields.pop("images"), state.dataset_roots, field="images", base=state.projects_root)
        if not images.exists():
            raise InvalidParameter("images", str(images), "no such folder or .zip on the server")
    else:
        return JSONResponse({"detail": "send application/json or multipart/form-data"}, status_code=415)
    upload_key = None
    try:
        payload = await run_in_threadpool(_payload, state, fields, images, upload_dir)
        if upload_dir is not None and state.artifacts_shared:
            # Its path under the projects folder, as for every file of a run; known before the
            # upload starts, so a half-done upload is removed too.
            upload_key = upload_dir.resolve().relative_to(state.projects_root).as_posix()
            await run_in_threadpool(_share_upload, state, upload_dir, upload_key)
            payload["upload_key"] = upload_key
        requires = await run_in_threadpool(_requirements, state, payload)
        job = await run_in_threadpool(state.store.submit, "training", payload, requires)
    except BaseException:
        if upload_dir is not None:
            shutil.rmtree(upload_dir, ignore_errors=True)
        if upload_key is not None:
            await run_in_threadpool(state.artifacts.delete, upload_key)
        raise
    state.wake_worker()
    return {"request_id": job.id, "status": job.status.value, **_urls(request, job.id)}


def _json_object(text: Any, field: str) -> dict[str, Any]:
    if not isinstance(text, str):
        raise InvalidParameter(field, type(text).__name__, "must be a JSON object")
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InvalidParameter(field, text[:80], f"not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise InvalidParameter(field, text[:80], "must be a JSON object")
    try:
        reject_non_finite(value, field)
    except ValueError as exc:
        raise InvalidParameter(field, "...", str(exc)) from None
    return value


def _store_zip(fileobj, upload_dir: Path, max_unzipped: int) -> Path:
    from lorastudio.training.dataset.ingest import extract_zip

    archive = upload_dir / "dataset.zip"
    try:
        upload_dir.mkdir(parents=True, exist_ok=False)
        with open(archive, "wb") as out:
            shutil.copyfileobj(fileobj, out, 1024 * 1024)
        # Extracted now, with ingest's zip-slip and zip-bomb checks, so a bad archive is a 422
        # to the uploader rather than a FAILED job later.
        return extract_zip(archive, upload_dir / "images", max_unzipped_bytes=max_unzipped)
    except DatasetError as exc:
        shutil.rmtree(upload_dir, ignore_errors=True)
        raise InvalidParameter("images", "<upload>", str(exc)) from None
    except BaseException as exc:
        # Nothing of a failed upload stays behind (a full disk most of all: the half-written
        # zip is what filled it).
        shutil.rmtree(upload_dir, ignore_errors=True)
        raise_if_disk_full(exc, upload_dir.parent, "the uploaded dataset",
                           "free space on the server's projects disk (old uploads and training "
                           "checkpoints are under projects/) or upload a smaller zip")
        raise
    finally:
        archive.unlink(missing_ok=True)


def _payload(state, fields: dict[str, Any], images: Path, upload_dir: Path | None) -> dict[str, Any]:
    from lorastudio.training.config import training_config

    for key in _SERVER_FIELDS:
        if key in fields:
            raise InvalidParameter(key, fields[key], "is set by the server, not by the request")
    webhook = fields.pop("webhook_url", None)
    if webhook is not None:
        if not isinstance(webhook, str):
            raise InvalidParameter("webhook_url", webhook, "must be a URL")
        check_webhook_url(webhook, state.webhook_hosts)
    if isinstance(fields.get("base"), str):
        fields["base"] = str(state.checkpoint_entry(fields["base"], "base").path)
    if fields.get("reg_images") is not None:
        # the same confinement as the dataset: a request names folders under the dataset roots only
        if not isinstance(fields["reg_images"], str):
            raise InvalidParameter("reg_images", fields["reg_images"], "a folder or .zip path on the server")
        reg = resolve_inside(fields["reg_images"], state.dataset_roots, field="reg_images", base=state.projects_root)
        if not reg.exists():
            raise InvalidParameter("reg_images", str(reg), "no such folder or .zip on the server")
        fields["reg_images"] = str(reg)
    config = training_config({**fields, "images": str(images), "projects_dir": str(state.projects_root),
                              "models_dir": str(state.catalog.root.root)})
    return {"config": config.model_dump(mode="json"), "webhook_url": webhook,
            "upload_dir": str(upload_dir) if upload_dir else None}


def _share_upload(state, upload_dir: Path, key: str) -> None:
    """Move an uploaded dataset into the artifact store, where a worker on any machine fetches it."""
    state.artifacts.put_dir(upload_dir, key)
    shutil.rmtree(upload_dir, ignore_errors=True)


def _requirements(state, payload: dict[str, Any]):
    """What a worker needs for this training: the base model's family (read from its header).

    Workers started with --families claim only the families they can load; an unreadable
    base is left to the worker that runs the job to report.
    """
    from lorastudio.core.errors import LorastudioError
    from lorastudio.services.jobs import JobRequirements

    base = payload["config"].get("base")
    if not base:
        return None
    try:
        from lorastudio.models.load_options import family_of, load_options

        options = load_options(state.catalog.root, device="cpu", dtype="auto",
                               allow_pickle=state.settings.allow_pickle)
        return JobRequirements(family=family_of(Path(base), options).name)
    except (LorastudioError, OSError):
        return None


# --- status, events, result, files, cancel ----------------------------------------------------------
def _status(job, request: Request, *, logs=None) -> dict[str, Any]:
    roots = server_roots(_state(request))
    out: dict[str, Any] = {"request_id": job.id, "status": job.status.value, **_urls(request, job.id),
                           "created_at": _iso(job.created_at), "started_at": _iso(job.started_at),
                           "finished_at": _iso(job.finished_at), "attempts": job.attempts,
                           "progress": job.progress}
    value = job.status.value
    if value == "IN_QUEUE":
        out["queue_position"] = job.position
    elif value == "IN_PROGRESS":
        for key in ("step", "total_steps", "loss", "eta_s"):
            out[key] = job.progress.get(key)
        out["cancel_requested"] = job.cancel_requested
    elif value == "COMPLETED":
        out["response_url"] = out["result_url"]
    elif value in ("FAILED", "CANCELLED"):
        out["reason"] = public_text(job.error, roots) if job.error is not None else None
    if logs is not None:
        out["logs"] = [_log_line(line, roots) for line in logs]
    return out


def _log_line(line, roots) -> dict[str, Any]:
    # The job log keeps tracebacks for the server's owner; a client sees the message only.
    return {"seq": line.seq, "timestamp": _iso(line.ts), "level": line.level,
            "message": public_text(line.message, roots)}


def _iso(ts) -> str | None:
    return ts.isoformat() if ts is not None else None


RequestId = Annotated[str, PathParam(pattern=_UUID, description="request_id returned by POST /v1/trainings")]


@router.get("")
async def list_trainings(request: Request) -> list[dict[str, Any]]:
    jobs = await run_in_threadpool(_state(request).store.list, None, "training")
    return [{"request_id": j.id, "status": j.status.value, "created_at": _iso(j.created_at),
             "status_url": str(request.url_for("training_status", request_id=j.id))} for j in jobs]


@router.get("/{request_id}/status", name="training_status")
async def training_status(request: Request, request_id: RequestId, logs: bool = False) -> dict:
    store = _state(request).store
    job = await run_in_threadpool(store.get, request_id)
    lines = await run_in_threadpool(store.logs, request_id) if logs else None
    return _status(job, request, logs=lines)


@router.get("/{request_id}/events", name="training_events")
async def training_events(request: Request, request_id: RequestId) -> StreamingResponse:
    """Server-sent events: `log` per log line, `status` on every change, `done` at the end."""
    store = _state(request).store
    await run_in_threadpool(store.get, request_id)  # 404 before the stream starts
    last = request.headers.get("last-event-id", "")
    since = int(last) if last.isdigit() else None

    async def stream():
        nonlocal since
        previous = None
        quiet_since = time.monotonic()
        seen = 0
        while not await request.is_disconnected():
            if store.pushes_changes:  # read the counter first: a change after it wakes the wait
                seen = await run_in_threadpool(store.change_counter, request_id)
            job = await run_in_threadpool(store.get, request_id)
            for line in await run_in_threadpool(store.logs, request_id, since):
                since = line.seq
                quiet_since = time.monotonic()
                yield _sse("log", _log_line(line, server_roots(_state(request))), event_id=line.seq)
            snapshot = _status(job, request)
            if snapshot != previous:
                previous = snapshot
                quiet_since = time.monotonic()
                yield _sse("status", snapshot)
            if job.status.is_terminal:
                yield _sse("done", snapshot)
                return
            if time.monotonic() - quiet_since > SSE_KEEPALIVE_S:
                quiet_since = time.monotonic()
                yield ": keep-alive\n\n"
            if store.pushes_changes:
                # LISTEN/NOTIFY (PostgreSQL): woken by any API node's or worker's change; the
                # timeout still checks for a disconnected client now and then.
                await run_in_threadpool(store.wait_for_change, request_id, seen, SSE_NOTIFY_WAIT_S)
            else:
                await asyncio.sleep(SSE_POLL_S)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _sse(event: str, data: dict, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, default=str)}\n\n"


@router.get("/{request_id}/result", name="training_result")
async def training_result(request: Request, request_id: RequestId):
    job = await run_in_threadpool(_state(request).store.get, request_id)
    if job.status.value != "COMPLETED":
        return JSONResponse(status_code=409, content={
            "detail": f"training {request_id} is {job.status.value}, not COMPLETED",
            "status": job.status.value,
            "reason": public_text(job.error, server_roots(_state(request))) if job.error is not None else None,
            "status_url": _urls(request, job.id)["status_url"]})
    res = job.result or {}
    files = res.get("files") or {}
    sizes = await run_in_threadpool(_sizes, _state(request), res)

    def link(name: str | None) -> dict | None:
        if not name or name not in files:
            return None
        return {"name": name, "url": str(request.url_for("training_file", request_id=job.id, name=name)),
                "size": sizes.get(name)}

    return {"request_id": job.id, "status": job.status.value, "lora": link(res.get("lora")),
            "diffusers_lora": link(res.get("diffusers_lora")), "config": link(res.get("config")),
            "samples": [link(n) for n in res.get("samples", []) if n in files],
            "files": [link(n) for n in files], "steps": res.get("steps"), "final_loss": res.get("final_loss"),
            # where the finished LoRA was installed in the models folder, and the prompt tag that uses it
            "installed_lora": res.get("installed_lora"), "lora_tag": res.get("lora_tag")}


@router.get("/{request_id}/files/{name}", name="training_file")
async def training_file(request: Request, request_id: RequestId, name: str = PathParam(max_length=255)):
    state = _state(request)
    job = await run_in_threadpool(state.store.get, request_id)
    files = (job.result or {}).get("files") or {} if job.status.value == "COMPLETED" else {}
    # Only names the result lists are served; the name is never turned into a path.
    key = _artifact_key(state, job.result, name) if name in files else None
    if key is None:
        return JSONResponse(status_code=404, content={"detail": f"no file {name!r} in training {request_id}"})
    try:
        local = await run_in_threadpool(state.artifacts.local_path, key)
        if local is not None:
            return FileResponse(local, filename=name)
        size = await run_in_threadpool(state.artifacts.size, key)
        reader = await run_in_threadpool(state.artifacts.open_read, key)
    except NotFound:
        return JSONResponse(status_code=404, content={"detail": f"{name!r} no longer exists"})
    # Streamed from the bucket as it arrives: a LoRA never needs room on the API node's disk.
    headers = {"content-length": str(size), "content-disposition": _attachment(name)}
    return StreamingResponse(_chunks(reader), media_type=mimetypes.guess_type(name)[0] or "application/octet-stream",
                             headers=headers)


def _artifact_key(state, result: dict | None, name: str) -> str | None:
    """The artifact-store key of a listed result file: the worker's `keys` entry, or (results
    stored before keys existed) its path under this node's projects folder."""
    result = result or {}
    key = (result.get("keys") or {}).get(name)
    if key is None:
        path = Path((result.get("files") or {})[name])
        if not path.is_absolute() or not path.resolve().is_relative_to(state.projects_root):
            return None
        key = path.resolve().relative_to(state.projects_root).as_posix()
    try:
        return check_key(key)
    except InvalidParameter:
        return None


def _sizes(state, result: dict) -> dict[str, int]:
    out = {}
    for name in result.get("files") or {}:
        key = _artifact_key(state, result, name)
        if key is not None:
            try:
                out[name] = state.artifacts.size(key)
            except NotFound:
                pass
    return out


def _chunks(reader, size: int = 1024 * 1024):
    # A plain iterator: Starlette runs it in a thread, so a slow bucket never blocks the event loop.
    with reader:
        while chunk := reader.read(size):
            yield chunk


def _attachment(name: str) -> str:
    quoted = quote(name)
    return f'attachment; filename="{name}"' if quoted == name else f"attachment; filename*=utf-8''{quoted}"


@router.put("/{request_id}/cancel", name="training_cancel", status_code=202)
async def training_cancel(request: Request, request_id: RequestId):
    store = _state(request).store
    before = await run_in_threadpool(store.get, request_id)
    if before.status.is_terminal:
        return JSONResponse(status_code=400, content={"status": "ALREADY_COMPLETED",
                                                      "job_status": before.status.value})
    after = await run_in_threadpool(store.request_cancel, request_id)
    return {"status": "CANCELLATION_REQUESTED", "job_status": after.status.value}
