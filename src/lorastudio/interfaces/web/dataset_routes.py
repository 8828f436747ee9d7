"""`/v1/datasets`: upload pictures (or a zip) before a training, see the dataset doctor's verdict
per file, edit captions. The folder lives under the projects folder, so POST /v1/trainings can
name it as `images` like any other dataset folder on the server."""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, BinaryIO

from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from lorastudio.core.atomic import atomic_open, atomic_write_text
from lorastudio.core.errors import DatasetError, InvalidParameter, NotFound
from lorastudio.interfaces.api.security import resolve_inside

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])

UPLOADS = "datasets"  # under the projects folder
_ID = r"^upload-[0-9a-f]{32}$"
# One path segment a browser may send as a file name: no separators, no hidden files.
_FILE_NAME = re.compile(r"^[^/\\\x00:*?\"<>|]{1,200}$")
MAX_FILES_PER_REQUEST = 200
CAPTION_MAX_CHARS = 10_000
# Verdicts after which a browser could not show the picture anyway.
_UNDECODABLE = {"unreadable", "not_an_image", "unsupported_image", "corrupt", "too_large"}

DatasetId = Annotated[str, PathParam(pattern=_ID, description="dataset_id returned by POST /v1/datasets")]


class DatasetCreated(BaseModel):
    dataset_id: str
    images: str = Field(description="the value to send as `images` in POST /v1/trainings")


class FileProblem(BaseModel):
    code: str
    severity: str
    message: str


class DatasetFile(BaseModel):
    name: str = Field(description="path inside the dataset (POSIX)")
    url: str | None = Field(description="the picture itself; null when it cannot be decoded")
    caption: str | None = Field(description="text of the same-name .txt file, as written")
    trained_caption: str | None = Field(description="what training uses: the caption with the trigger word")
    transparent: bool = Field(description="has transparency: flattened on the background colour (white)")
    verdict: str = Field(description="ok | warning | error")
    problems: list[FileProblem]


class DatasetReportOut(BaseModel):
    dataset_id: str
    images: str
    files: list[DatasetFile]
    problems: list[FileProblem] = Field(description="problems of the dataset as a whole or of non-picture files")
    usable: int
    errors: int
    warnings: int


class CaptionBody(BaseModel):
    caption: str = Field(max_length=CAPTION_MAX_CHARS)


def _state(request: Request):
    return request.app.state.api


def _root(state) -> Path:
    return state.projects_root / UPLOADS


def _folder(state, dataset_id: str) -> Path:
    folder = _root(state) / dataset_id
    if not folder.is_dir():
        raise NotFound("dataset", dataset_id)
    return folder


@router.post("", status_code=201, response_model=DatasetCreated)
async def create_dataset(request: Request) -> dict:
    """An empty dataset folder; add pictures with POST /v1/datasets/{id}/files."""
    dataset_id = f"upload-{uuid.uuid4().hex}"
    folder = _root(_state(request)) / dataset_id
    await run_in_threadpool(folder.mkdir, parents=True)
    return {"dataset_id": dataset_id, "images": f"{UPLOADS}/{dataset_id}"}


_FILES_DOC = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["files"], "properties": {"files": {
        "type": "array", "items": {"type": "string", "format": "binary"},
        "description": "pictures, .txt captions, or .zip archives (extracted with the dataset checks' limits)"}}}}}}}


@router.post("/{dataset_id}/files", response_model=DatasetReportOut, openapi_extra=_FILES_DOC)
async def add_files(request: Request, dataset_id: DatasetId, trigger: str = "", resolution: int = Query(512, ge=8,
                    le=8192)) -> dict:
    state = _state(request)
    folder = _folder(state, dataset_id)
    form = await request.form(max_files=MAX_FILES_PER_REQUEST, max_fields=4)
    try:
        uploads = [f for f in form.getlist("files") if not isinstance(f, str)]
        if not uploads:
            raise InvalidParameter("files", None, "attach pictures, captions or a .zip as file parts named 'files'")
        for up in uploads:
            name = _file_name(up.filename or "")
            # Multipart parts are spooled to disk by Starlette: copied from there, never read whole
            # into memory (a dataset zip may be gigabytes).
            await run_in_threadpool(_store, folder, name, up.file, state.limits.max_unzipped_bytes)
    finally:
        await form.close()
    return await run_in_threadpool(_report, request, state, dataset_id, folder, trigger, resolution)


def _file_name(raw: str) -> str:
    # Browsers send a bare name for a file input, a relative path for a picked folder: keep the last part.
    name = PurePosixPath(raw.replace("\\", "/")).name
    if not _FILE_NAME.match(name) or name.startswith("."):
        raise InvalidParameter("files", raw, "not a usable file name (no hidden files, separators or :*?\"<>|)")
    return name


def _store(folder: Path, name: str, data: BinaryIO, max_unzipped: int) -> None:
    data.seek(0)
    if name.lower().endswith(".zip"):
        from lorastudio.training.dataset.ingest import extract_zip

        staging = folder.parent / f".{folder.name}-{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            archive = staging / "upload.zip"
            with open(archive, "wb") as out:
                shutil.copyfileobj(data, out, 1024 * 1024)
            # extract_zip refuses zip-slip entries and bombs; nothing lands in the dataset unless it all passed.
            extracted = extract_zip(archive, staging / "files", max_unzipped_bytes=max_unzipped)
            for path in sorted(extracted.rglob("*")):
                if path.is_file():
                    target = folder / path.relative_to(extracted)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.move(str(path), target)
        except DatasetError as exc:
            raise InvalidParameter("files", name, str(exc)) from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    else:
        with atomic_open(folder / name) as out:
            shutil.copyfileobj(data, out, 1024 * 1024)


@router.get("/{dataset_id}", response_model=DatasetReportOut)
async def check(request: Request, dataset_id: DatasetId, trigger: str = "",
                resolution: int = Query(512, ge=8, le=8192)) -> dict:
    """The dataset doctor's verdict on every file, with the trigger word and resolution given."""
    state = _state(request)
    folder = _folder(state, dataset_id)
    return await run_in_threadpool(_report, request, state, dataset_id, folder, trigger, resolution)


def _report(request: Request, state, dataset_id: str, folder: Path, trigger: str, resolution: int) -> dict:
    from lorastudio.training.dataset.checks import check_dataset
    from lorastudio.training.dataset.config import dataset_config
    from lorastudio.training.dataset.ingest import open_source

    # The same dataset settings TrainingConfig.dataset_config builds for a run at this resolution.
    cfg = dataset_config(dict(add_trigger=True, trigger_word=trigger.strip() or "trigger", resolutions=(resolution,),
                              min_size=min(64, resolution), bucket_step=64 if resolution >= 256 else 8))
    with open_source(folder) as source:
        report = check_dataset(source, cfg)
        rel_of = {source.display(f.rel): f.rel for f in source.files}
        images = source.images
        caption_files = {f.stem_key: f for f in source.files if f.image_format is None and f.suffix == ".txt"}
        by_rel: dict[str, list[dict[str, str]]] = {}
        general: list[dict[str, str]] = []
        for p in report.problems:
            entry = {"code": p.code, "severity": p.severity, "message": _short(p.message, folder)}
            rel = rel_of.get(p.file)
            target = None
            if rel is not None:
                # A caption file's problem is shown on its picture.
                stem = PurePosixPath(rel)
                target = next((im.rel for im in images if im.stem_key == str(stem.parent / stem.stem)), None) or rel
            if target is not None and any(im.rel == target for im in images):
                by_rel.setdefault(target, []).append(entry)
            else:
                general.append(entry)
        trained = {}
        for item in report.items:
            rel = rel_of.get(item.name)
            if rel is not None:
                trained.setdefault(rel, item.caption)
        files = []
        for im in images:
            problems = by_rel.get(im.rel, [])
            cap = caption_files.get(im.stem_key)
            verdict = "error" if any(p["severity"] == "error" for p in problems) else \
                "warning" if problems else "ok"
            files.append({
                "name": im.rel, "caption": _read_text(cap.path) if cap else None,
                "url": None if any(p["code"] in _UNDECODABLE for p in problems) else
                str(request.url_for("dataset_file", dataset_id=dataset_id, name=im.rel)),
                "trained_caption": trained.get(im.rel), "transparent": _has_alpha(im.path),
                "verdict": verdict, "problems": problems})
    return {"dataset_id": dataset_id, "images": f"{UPLOADS}/{dataset_id}", "files": files, "problems": general,
            "usable": len({i.name for i in report.items}), "errors": sum(p.severity == "error" for p in report.problems),
            "warnings": sum(p.severity == "warning" for p in report.problems)}


def _short(message: str, folder: Path) -> str:
    # The server's folder layout is nobody's business on the page; the file name inside the dataset is.
    return message.replace(f"{folder}/", "").replace(str(folder), ".")


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8-sig").strip()
    except (OSError, UnicodeDecodeError):
        return None


def _has_alpha(path: Path) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info
    except Exception:  # an unreadable picture already has its own verdict
        return False


def _inside(folder: Path, name: str) -> Path:
    return resolve_inside(name, [folder], field="name", base=folder)


@router.get("/{dataset_id}/files/{name:path}", name="dataset_file", response_class=FileResponse)
async def dataset_file(request: Request, dataset_id: DatasetId, name: str):
    from lorastudio.training.dataset.images import SUPPORTED_FORMATS, sniff_format

    folder = _folder(_state(request), dataset_id)
    path = _inside(folder, name)
    if not path.is_file():
        raise NotFound("file", name)
    with open(path, "rb") as f:
        fmt = sniff_format(f.read(64))
    if fmt not in SUPPORTED_FORMATS:
        # Only pictures are served, with their own type: a .html "picture" is never rendered as a page.
        raise InvalidParameter("name", name, "not a picture")
    return FileResponse(path, media_type=f"image/{fmt.lower()}", headers={"X-Content-Type-Options": "nosniff"})


@router.put("/{dataset_id}/captions/{name:path}")
async def set_caption(request: Request, dataset_id: DatasetId, name: str, body: CaptionBody) -> dict[str, Any]:
    """Write the caption of picture `name` (its same-name .txt file); an empty caption removes it."""
    folder = _folder(_state(request), dataset_id)
    picture = _inside(folder, name)
    if not picture.is_file():
        raise NotFound("file", name)
    target = picture.with_suffix(".txt")
    text = body.caption.strip()
    if "\x00" in text:
        raise InvalidParameter("caption", "...", "NUL bytes are not allowed in a caption")
    if text:
        await run_in_threadpool(atomic_write_text, target, text + "\n")
    else:
        target.unlink(missing_ok=True)
    return {"name": name, "caption": text or None}


@router.delete("/{dataset_id}/files/{name:path}")
async def delete_file(request: Request, dataset_id: DatasetId, name: str) -> dict[str, Any]:
    """Remove a picture (and its caption) from the dataset."""
    folder = _folder(_state(request), dataset_id)
    picture = _inside(folder, name)
    if not picture.is_file():
        raise NotFound("file", name)
    picture.unlink()
    picture.with_suffix(".txt").unlink(missing_ok=True)
    return {"name": name, "deleted": True}
