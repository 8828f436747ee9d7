"""`/v1/datasets`: prepare a dataset on the server with local models, then edit the result.

`POST /v1/datasets/caption` runs the tagger / captioner (`dry_run` to preview without writing);
`PUT /v1/datasets/captions` writes captions a person edited; `POST /v1/datasets/mask` writes
subject masks, `POST /v1/datasets/crop` subject-centred crops. Each takes a folder or a .zip (a
zip is extracted with the dataset ingest's checks into `out`, never changed itself). Folders must
lie inside the server's dataset roots; models are named only (looked up under
models/interrogators/ and models/rembg/), so a client cannot make the server load an arbitrary file.
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
    out: str | None = Field(None, max_length=1000, description="For a .zip: the new folder (inside a dataset root) "
                                                               "it is extracted to and captioned in")


class MaskRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    images: str = Field(..., description="Dataset folder or .zip on the server (inside a dataset root)")
    model: str | None = Field(None, description="Name of a u2net-family .onnx file in models/rembg/ (u2net, "
                                                "isnet-anime...); none: pictures with alpha use their alpha")
    overwrite: bool = False
    out: str | None = Field(None, max_length=1000, description="For a .zip: the new folder (inside a dataset root) "
                                                               "it is extracted to and masked in")


class CropRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    images: str = Field(..., description="Dataset folder or .zip on the server (inside a dataset root)")
    out: str = Field(..., max_length=1000, description="Folder (inside a dataset root) the crops go to")
    resolution: int = Field(512, ge=64, le=4096, description="Base resolution of the training buckets")
    bucket_step: int = Field(64, ge=8, le=256)


class CaptionEdits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    images: str = Field(..., description="Dataset folder on the server (inside a dataset root)")
    captions: dict[str, str] = Field(..., description="Picture path inside the folder -> caption text",
                                     max_length=20_000)


def _source(request: Request, value: str, out: str | None) -> tuple[Path, Path | None]:
    """(folder or zip, the folder a zip goes to): what `open_source` takes, checked against the roots."""
    state = request.app.state.api
    path = resolve_inside(value, state.dataset_roots, field="images", base=state.projects_root)
    if path.is_dir():
        return path, None
    if not (path.is_file() and path.suffix.lower() == ".zip"):
        raise InvalidParameter("images", value, "no such folder or .zip file on the server")
    if out is None:
        raise InvalidParameter("out", None, "a .zip is extracted into a new folder first (the archive is never "
                                            "changed): give `out`, inside a dataset root")
    target = _new_folder(request, out)
    return path, target


def _new_folder(request: Request, value: str) -> Path:
    state = request.app.state.api
    target = resolve_inside(value, state.dataset_roots, field="out", base=state.projects_root)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise InvalidParameter("out", value, "already exists and is not empty")
    return target


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

    source, out = _source(request, body.images, body.out)
    options = build_model(CaptionOptions, {
        "tagger": _model_name("tagger", body.tagger), "captioner": _model_name("captioner", body.captioner),
        "mode": body.mode, "prefix": body.prefix, "suffix": body.suffix, "overwrite": body.overwrite,
        "task_prompt": body.task_prompt, "max_length": body.max_length,
        "wd14": {"general_threshold": body.general_threshold, "character_threshold": body.character_threshold,
                 "keep_rating": body.keep_rating, "max_tags": body.max_tags, "blacklist": tuple(body.blacklist),
                 "whitelist": tuple(body.whitelist)}})
    run = run_captioning(source, options, models_dir=request.app.state.api.settings.models_dir,
                         trigger=body.trigger, dry_run=body.dry_run, out_dir=out)
    return run.summary()


@router.post("/mask")
def mask_dataset(body: MaskRequest, request: Request) -> dict:
    """`<image>.mask.png` beside every picture (kohya's masked-loss layout), from alpha or the model."""
    from lorastudio.core.paths import ModelsRoot
    from lorastudio.services.masking import mask_dataset as run_masking

    source, out = _source(request, body.images, body.out)
    model = None
    if body.model is not None:
        name = _model_name("model", body.model)
        home = ModelsRoot.at(request.app.state.api.settings.models_dir).root / "rembg"
        model = next((home / n for n in (name, f"{name}.onnx") if (home / n).is_file()), None)
        if model is None:
            known = sorted(p.stem for p in home.glob("*.onnx")) if home.is_dir() else []
            raise InvalidParameter("model", body.model, f"no such file in models/rembg/ (there: "
                                                        f"{', '.join(known) or 'none'}; nothing is downloaded)")
    run = run_masking(source, model=str(model) if model else None, models_dir=request.app.state.api.settings.models_dir,
                      overwrite=body.overwrite, out_dir=out)
    root = run.root or source
    return {"masks": [{"image": r.image.relative_to(root).as_posix(), "mask": r.mask.relative_to(root).as_posix(),
                       "source": r.source} for r in run.results],
            "failures": list(run.failures), "folder": _shown(request, root)}


@router.post("/crop")
def crop_dataset(body: CropRequest, request: Request) -> dict:
    """Each picture cropped to its training bucket around the subject (mask or alpha) into `out`;
    captions and masks follow."""
    from lorastudio.training.dataset.crops import crop_folder

    state = request.app.state.api
    # A zip is extracted (with the ingest's checks) into a temporary folder by crop_folder itself.
    source = resolve_inside(body.images, state.dataset_roots, field="images", base=state.projects_root)
    if not (source.is_dir() or (source.is_file() and source.suffix.lower() == ".zip")):
        raise InvalidParameter("images", body.images, "no such folder or .zip file on the server")
    out = _new_folder(request, body.out)
    results = crop_folder(source, out, resolution=body.resolution, step=body.bucket_step)
    return {"crops": [{"image": r.target.relative_to(out).as_posix(), "bucket": r.bucket.label} for r in results],
            "folder": _shown(request, out)}


def _shown(request: Request, folder: Path) -> str:
    """A folder as the client names it: relative to the projects folder when inside it."""
    root = request.app.state.api.projects_root
    return folder.relative_to(root).as_posix() if folder.is_relative_to(root) else str(folder)


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
