"""LoRA cards for the page's LoRA browser (trigger words, family, rank, preview), and installing
a finished training's LoRA into models/Lora; usable without the page."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from lorastudio.core.errors import InvalidParameter, NotFound
from lorastudio.interfaces.api.security import resolve_inside

router = APIRouter(tags=["loras"])

_UUID = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
PREVIEW_SUFFIXES = (".preview.png", ".png", ".preview.jpg", ".jpg", ".preview.webp", ".webp")


def _state(request: Request):
    return request.app.state.api


# --- LoRA cards -----------------------------------------------------------------------------------
class LoraCard(BaseModel):
    name: str = Field(description="what goes into <lora:NAME:weight>")
    alias: str
    family: str | None = Field(description="ss_base_model_version / modelspec.architecture, as written")
    rank: int | None
    trigger_words: list[str]
    preview_url: str | None
    size: int
    training: dict[str, Any] = Field(description="the file's ss_* and modelspec.* metadata")
    version_dir: str | None = Field(None, description="the training's version folder (relative to the projects "
                                    "folder) when the LoRA was trained on this server: POST /v1/publish takes it")


@router.get("/v1/loras", response_model=list[LoraCard])
async def lora_cards(request: Request) -> list[dict]:
    """One card per file in models/Lora, read from the safetensors header only."""
    state = _state(request)

    def cards() -> list[dict]:
        versions = _trained_here(state)
        return [_card(request, state, e, versions) for e in state.catalog.loras()]

    return await run_in_threadpool(cards)


def _trained_here(state) -> dict[tuple[str, str], str]:
    """(ss_session_id, ss_output_name) of each finished training's LoRA -> its version folder,
    relative to the projects folder: a LoRA file installed into models/Lora (renamed or not) is
    recognised by the metadata the training wrote into it."""
    out: dict[tuple[str, str], str] = {}
    for job in state.store.list(kind="training"):
        res = job.result or {}
        lora = (res.get("files") or {}).get(res.get("lora") or "")
        if job.status.value != "COMPLETED" or not lora or not res.get("version_dir"):
            continue
        meta = state.lora_metadata(Path(lora))
        try:
            rel = Path(res["version_dir"]).resolve().relative_to(state.projects_root).as_posix()
        except ValueError:
            continue
        if meta.get("ss_session_id") is not None:
            out[(str(meta["ss_session_id"]), str(meta.get("ss_output_name")))] = rel
    return out


def _card(request: Request, state, entry, versions: dict[tuple[str, str], str] | None = None) -> dict:
    meta = state.lora_metadata(entry.path)
    name = entry.path.stem
    alias = meta.get("ss_output_name") if isinstance(meta.get("ss_output_name"), str) else name
    rank = meta.get("ss_network_dim")
    try:
        rank = int(rank) if rank is not None else None
    except (TypeError, ValueError):
        rank = None
    family = meta.get("ss_base_model_version") or meta.get("modelspec.architecture")
    return {"name": name, "alias": alias, "family": str(family) if family is not None else None, "rank": rank,
            "trigger_words": trigger_words(meta),
            "preview_url": str(request.url_for("lora_preview", name=name)) if _preview(entry.path) else None,
            "size": entry.path.stat().st_size,
            "training": {k: v for k, v in meta.items() if k.startswith(("ss_", "modelspec."))
                         and k not in ("ss_tag_frequency", "ss_dataset_dirs", "modelspec.thumbnail")},
            "version_dir": (versions or {}).get((str(meta.get("ss_session_id")), str(meta.get("ss_output_name"))))}


def trigger_words(meta: dict[str, Any], limit: int = 8) -> list[str]:
    """`modelspec.trigger_phrase` when set; else the most frequent tags of `ss_tag_frequency`
    (how A1111's and Civitai's helpers suggest activation words)."""
    phrase = meta.get("modelspec.trigger_phrase")
    if isinstance(phrase, str) and phrase.strip():
        return [w.strip() for w in phrase.split(",") if w.strip()][:limit]
    freq = meta.get("ss_tag_frequency")
    counts: dict[str, int] = {}
    if isinstance(freq, dict):
        for tags in freq.values():
            if isinstance(tags, dict):
                for tag, n in tags.items():
                    if isinstance(n, (int, float)):
                        counts[str(tag).strip()] = counts.get(str(tag).strip(), 0) + int(n)
    return [t for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if t][:limit]


def _preview(path: Path) -> Path | None:
    stem = path.with_suffix("")
    for suffix in PREVIEW_SUFFIXES:
        candidate = Path(f"{stem}{suffix}")
        if candidate.is_file():
            return candidate
    return None


@router.get("/v1/loras/{name}/preview", name="lora_preview", response_class=FileResponse)
async def lora_preview(request: Request, name: str = PathParam(max_length=255)):
    """`<name>.preview.png` (or `.png`) beside the LoRA, as A1111's extra-networks cards use."""
    state = _state(request)
    entry = next((e for e in await run_in_threadpool(state.catalog.loras) if e.path.stem == name), None)
    preview = _preview(entry.path) if entry is not None else None
    if preview is None:
        raise NotFound("preview", name)
    kind = preview.suffix.lstrip(".").replace("jpg", "jpeg")
    return FileResponse(preview, media_type=f"image/{kind}", headers={"X-Content-Type-Options": "nosniff"})


class InstallRequest(BaseModel):
    request_id: str = Field(pattern=_UUID)


@router.post("/v1/loras/install", response_model=LoraCard)
async def install_lora(request: Request, body: InstallRequest) -> dict:
    """Copy a finished training's LoRA into models/Lora (and its newest sample as the card's
    preview), so generation can use <lora:name:1>. Installing the same run twice is a no-op."""
    state = _state(request)

    def install() -> dict:
        from lorastudio.core.atomic import atomic_path

        job = state.store.get(body.request_id)
        if job.status.value != "COMPLETED":
            raise InvalidParameter("request_id", body.request_id, f"training is {job.status.value}, not COMPLETED")
        res = job.result or {}
        files = res.get("files") or {}
        if not res.get("lora") or res["lora"] not in files:
            raise NotFound("LoRA of training", body.request_id)
        source = resolve_inside(files[res["lora"]], [state.projects_root], field="request_id")
        lora_dir = state.catalog.root.lora
        lora_dir.mkdir(parents=True, exist_ok=True)
        target = lora_dir / source.name
        n = 1
        while target.exists() and not _same_file(target, source):
            n += 1
            target = lora_dir / f"{source.stem}-{n}{source.suffix}"
        if not target.exists():
            with atomic_path(target) as tmp:
                shutil.copyfile(source, tmp)
        samples = [files[s] for s in res.get("samples", []) if s in files]
        preview = target.with_suffix(".preview.png")
        if samples and not preview.exists():
            with atomic_path(preview) as tmp:
                shutil.copyfile(samples[-1], tmp)
        state.forget_lora_metadata()
        entry = next(e for e in state.catalog.loras() if e.path.resolve() == target.resolve())
        return _card(request, state, entry, _trained_here(state))

    return await run_in_threadpool(install)


def _same_file(a: Path, b: Path) -> bool:
    import filecmp

    return filecmp.cmp(a, b, shallow=False)
