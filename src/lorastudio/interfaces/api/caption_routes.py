"""`/v1/datasets`: caption a dataset folder on the server with local models, then edit the result.

`POST /v1/datasets/caption` runs the tagger / captioner (`dry_run` to preview without writing);
`PUT /v1/datasets/captions` writes captions a person edited. Folders must lie inside the
server's dataset roots; models are named only (looked up under models/interrogators/), so a
client cannot make the server load an arbitrary file.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from lorastudio.core.errors import InvalidParameter
from lorastudio.interfaces.api.security import resolve_inside

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])
_MAX_CAPTION_CHARS = 10_000


class CaptionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    images: str = Field(..., description="Dataset folder on the server (inside a dataset root)")
    tagger: str | None = Field(None, description="Name of a WD14 folder under models/interrogators/")
    captioner: str | None = Field(None, description="Name of a BLIP / Florence-2 folder under models/interrogators/")
    mode: Literal["tags", "caption", "both"] | None = None
    trigger: str | None = None
    prefix: str | None = None
    suffix: str | None = None
    overwrite: bool = False
    dry_run: bool = False
    general_threshold: float = Field(0.35, ge=0, le=1)
    character_threshold: float = Field(0.85, ge=0, le=1)
    keep_rating: bool = False
    max_tags: int | None = Field(None, ge=1, le=1000)
    blacklist: list[str] = Field(default_factory=list, max_length=1000)
    whitelist: list[str] = Field(default_factory=list, max_length=1000)
    task_prompt: str | None = Field(None, max_length=200)
    max_length: int = Field(40, ge=4, le=512)


class CaptionEdits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    images: str = Field(..., description="Dataset folder on the server (inside a dataset root)")
    captions: dict[str, str] = Field(..., description="Picture path inside the folder -> caption text",
                                     max_length=20_000)


def _folder(request: Request, value: str) -> Path:
    state = request.app.state.api
    folder = resolve_inside(value, state.dataset_roots, field="images", base=state.projects_root)
    if not folder.is_dir():
        raise InvalidParameter("images", value, "no such folder on the server (zips: extract them first)")
    return folder


def _model_name(field: str, value: str | None) -> str | None:
    if value is not None and (len(PurePosixPath(value).parts) != 1 or "\\" in value or value in (".", "..")):
        raise InvalidParameter(field, value, "give the name of a folder under models/interrogators/, not a path")
    return value


@router.post("/caption")
def caption_dataset(body: CaptionRequest, request: Request) -> dict:
    from lorastudio.core.params import build_model
    from lorastudio.services.captioning import caption_dataset as run_captioning
    from lorastudio.training.dataset.caption_options import CaptionOptions

    folder = _folder(request, body.images)
    options = build_model(CaptionOptions, {
        "tagger": _model_name("tagger", body.tagger), "captioner": _model_name("captioner", body.captioner),
        "mode": body.mode, "prefix": body.prefix, "suffix": body.suffix, "overwrite": body.overwrite,
        "task_prompt": body.task_prompt, "max_length": body.max_length,
        "wd14": {"general_threshold": body.general_threshold, "character_threshold": body.character_threshold,
                 "keep_rating": body.keep_rating, "max_tags": body.max_tags, "blacklist": tuple(body.blacklist),
                 "whitelist": tuple(body.whitelist)}})
    run = run_captioning(folder, options, models_dir=request.app.state.api.settings.models_dir,
                         trigger=body.trigger, dry_run=body.dry_run)
    return run.summary()


@router.put("/captions")
def write_edited_captions(body: CaptionEdits, request: Request) -> dict:
    from lorastudio.core.atomic import atomic_write_text
    from lorastudio.training.dataset.captions import normalize_caption
    from lorastudio.training.dataset.images import sniff_format

    folder = _folder(request, body.images)
    planned = []
    # Every edit is checked before any file is written: one bad name leaves all captions as they were.
    for rel, text in body.captions.items():
        picture = resolve_inside(rel, [folder], field=f"captions.{rel}", base=folder)
        try:
            with open(picture, "rb") as fh:
                is_picture = sniff_format(fh.read(32)) is not None
        except OSError:
            is_picture = False
        if not is_picture:
            raise InvalidParameter(f"captions.{rel}", rel, "not a picture in the dataset folder")
        if len(text) > _MAX_CAPTION_CHARS:
            raise InvalidParameter(f"captions.{rel}", text[:40] + "...", f"longer than {_MAX_CAPTION_CHARS} characters")
        planned.append((picture.with_suffix(".txt"), normalize_caption(text)))
    for path, text in planned:
        atomic_write_text(path, text + "\n")
    return {"written": [p.relative_to(folder).as_posix() for p, _ in planned]}
