"""The A1111-compatible `/sdapi/v1` routes."""

from __future__ import annotations

import datetime as _dt
import logging
import os
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Body, Request
from fastapi.concurrency import run_in_threadpool

from lorastudio.core.errors import InvalidParameter
from lorastudio.core.params import SEED_MAX, img2img_steps
from lorastudio.core.samplers import SAMPLERS
from lorastudio.interfaces.api import a1111_models as m
from lorastudio.interfaces.api.a1111_mapping import (
    XYZ_SCRIPT,
    GenerationPlan,
    info_json,
    plan_generation,
    renamed_error,
    schedulers,
)
from lorastudio.interfaces.api.images import decode_base64, decode_image, encode_png, image_grid, text_info

LATENT_UPSCALE_MODES = ["Latent", "Latent (antialiased)", "Latent (bicubic)", "Latent (bicubic antialiased)",
                        "Latent (nearest)", "Latent (nearest-exact)"]
MAX_INIT_IMAGES = 16

router = APIRouter(prefix="/sdapi/v1", tags=["A1111"])
log = logging.getLogger(__name__)


def _state(request: Request):
    return request.app.state.api


# --- generation ------------------------------------------------------------------------------------
@router.post("/txt2img", response_model=m.GenerationResponse)
async def txt2img(request: Request, body: m.Txt2ImgRequest) -> dict:
    """txt2img with A1111's request fields and defaults.

    A field left out takes A1111's API default: width and height are 512 whatever the
    checkpoint's native size (SDXL and FLUX clients send 1024), as A1111 does. Only the command
    line, typed by hand, draws at the checkpoint's native size when no size is given.
    """
    state = _state(request)
    hires = bool(getattr(state.engine, "supports_hires", False))
    plan = await run_in_threadpool(plan_generation, body, state, "txt2img", hires_supported=hires)
    return await _generate(state, plan, parameters=body.model_dump())


@router.post("/img2img", response_model=m.GenerationResponse)
async def img2img(request: Request, body: m.Img2ImgRequest) -> dict:
    state = _state(request)
    limits = state.limits
    if not body.init_images:
        raise InvalidParameter("init_images", body.init_images, "img2img needs at least one init image")
    if len(body.init_images) > MAX_INIT_IMAGES:
        raise InvalidParameter("init_images", f"<{len(body.init_images)} images>", f"at most {MAX_INIT_IMAGES}")

    def decode_images() -> tuple[list, Any]:
        # decode_image checks the declared size before any pixel is decompressed.
        images = [decode_image(data, f"init_images.{i}", max_bytes=limits.max_image_bytes,
                               max_pixels=limits.max_image_pixels) for i, data in enumerate(body.init_images)]
        mask = None
        if body.mask:
            mask = decode_image(body.mask, "mask", max_bytes=limits.max_image_bytes,
                                max_pixels=limits.max_image_pixels)
        return images, mask

    images, mask = await run_in_threadpool(decode_images)
    plan = await run_in_threadpool(plan_generation, body, state, "img2img")
    plan.init_images, plan.mask = images, mask
    parameters = body.model_dump()
    if not body.include_init_images:  # as A1111: the (large) inputs are echoed only on request
        parameters["init_images"] = parameters["mask"] = None
    return await _generate(state, plan, parameters=parameters)


async def _generate(state, plan: GenerationPlan, parameters: dict[str, Any]) -> dict:
    if plan.xyz is not None:
        return await _generate_xyz(state, plan, parameters)
    out = await state.on_device(lambda: _run(state, plan))
    images, infotexts, seeds, interrupted, stamp = out
    index_of_first = 0
    if plan.make_grid and len(images) >= 2 and plan.return_grid:
        index_of_first = 1

    def finish() -> list[str]:
        pics = list(images)
        texts = list(infotexts)
        day = _dt.date.today().isoformat()
        if plan.save_samples:
            from lorastudio.generation.outputs import save_image

            for im, text, seed in zip(pics, texts, seeds, strict=True):
                save_image(im, plan.samples_dir / day, seed, text)
        if plan.make_grid and len(pics) >= 2:
            grid = image_grid(pics)
            if plan.save_grid:
                from lorastudio.generation.outputs import save_image

                save_image(grid, plan.grids_dir / day, seeds[0], texts[0])
            if plan.return_grid:
                pics.insert(0, grid)
                texts.insert(0, texts[0])
        infotexts[:] = texts
        return [encode_png(im, t) for im, t in zip(pics, texts, strict=True)] if plan.send_images else []

    encoded = await run_in_threadpool(finish)
    if plan.persist_options:
        state.options.apply(plan.persist_options)
    return {"images": encoded, "parameters": parameters,
            "info": info_json(plan, infotexts, seeds, index_of_first, interrupted, stamp)}


async def _generate_xyz(state, plan: GenerationPlan, parameters: dict[str, Any]) -> dict:
    """script_name "x/y/z plot": as A1111 answers it, the grid first (then the sub-grids and cells
    asked for), each with its infotext; index_of_first_image is 1."""
    result, stamp = await state.on_device(lambda: _run_xyz(state, plan))

    def encode() -> list[str]:
        return [encode_png(im, t) for im, t in zip(result.images, result.infotexts, strict=True)]

    encoded = await run_in_threadpool(encode) if plan.send_images else []
    if plan.persist_options:
        state.options.apply(plan.persist_options)
    return {"images": encoded, "parameters": parameters,
            "info": info_json(plan, result.infotexts, result.seeds, 1, result.interrupted, stamp)}


def _run_xyz(state, plan: GenerationPlan):
    from lorastudio.generation.xyz_plot import plan_cells, run_xyz_plot

    progress, p = state.progress, plan.params
    cells = len(plan_cells(p, plan.xyz, plan.kind)[1])
    progress.begin(cells, img2img_steps(p.steps, p.denoising_strength) if plan.kind == "img2img" else p.steps,
                   plan.task_id)
    stamp = progress.job_timestamp
    day = _dt.date.today().isoformat()
    try:
        result = run_xyz_plot(
            state.engine, p, plan.xyz, mode=plan.kind, init_images=plan.init_images, mask=plan.mask,
            img2img_options=plan.img2img, controlnet=plan.controlnet,
            on_cell_progress=lambda n, step, steps: progress.on_step(n, step, steps),
            on_cell_done=lambda n, image: progress.batch_done(n, image),
            cells_dir=plan.samples_dir / day if plan.save_samples else None,
            grids_dir=plan.grids_dir / day if plan.make_grid and plan.save_grid else None)
    except InvalidParameter as exc:
        raise renamed_error(exc) from None
    finally:
        progress.end()
    return result, stamp


def _run(state, plan: GenerationPlan):
    """On the worker thread: one engine call per batch, so /skip and /interrupt act per batch as
    in A1111, and /progress can show the last finished image."""
    engine, progress, p = state.engine, state.progress, plan.params
    seeds = [(p.seed + i) % (SEED_MAX + 1) for i in range(p.batch_size * p.batch_count)]
    steps = img2img_steps(p.steps, p.denoising_strength) if plan.kind == "img2img" else p.steps
    progress.begin(p.batch_count, steps, plan.task_id)
    stamp = progress.job_timestamp
    images, infotexts, done_seeds = [], [], []
    interrupted = False
    try:
        for b in range(p.batch_count):
            if progress.was_interrupted:
                interrupted = True
                break
            batch = p.model_copy(update={"batch_count": 1, "seed": seeds[b * p.batch_size],
                                         "subseed": (p.subseed + b * p.batch_size) % (SEED_MAX + 1)})

            def on_step(_i, step, steps, b=b):
                progress.on_step(b, step, steps)

            control = {"controlnet": plan.controlnet} if plan.controlnet else {}
            try:
                if plan.kind == "img2img":
                    result = engine.img2img(batch, plan.init_images, plan.mask, options=plan.img2img, save=False,
                                            on_progress=on_step, **control)
                else:
                    result = engine.txt2img(batch, save=False, on_progress=on_step, **control)
            except InvalidParameter as exc:
                raise renamed_error(exc) from None
            for gi in result.images:
                images.append(gi.image)
                infotexts.append(gi.infotext)
                done_seeds.append(gi.seed)
            if not progress.batch_done(b, images[-1] if images else None):
                interrupted = True
                break
    finally:
        progress.end()
    return images, infotexts, done_seeds, interrupted, stamp


# --- png-info, progress, interrupt, skip -------------------------------------------------------------
@router.post("/png-info", response_model=m.PNGInfoResponse)
async def png_info(request: Request, body: m.PNGInfoRequest) -> dict:
    limits = _state(request).limits
    if not body.image.strip():
        return {"info": "", "items": {}, "parameters": {}}

    def read() -> dict:
        from lorastudio.core.infotext import parse_infotext

        raw = decode_base64(body.image, "image", max_bytes=limits.max_image_bytes)
        geninfo, items = text_info(raw, max_pixels=limits.max_image_pixels)
        return {"info": geninfo or "", "items": items, "parameters": parse_infotext(geninfo) if geninfo else {}}

    return await run_in_threadpool(read)


@router.get("/progress", response_model=m.ProgressResponse)
async def progress(request: Request, skip_current_image: bool = False) -> dict:
    snap = _state(request).progress.snapshot()
    image = snap.pop("image")
    snap["current_image"] = None
    if image is not None and not skip_current_image:
        snap["current_image"] = await run_in_threadpool(encode_png, image, None)
    snap["textinfo"] = None
    return snap


@router.post("/interrupt")
async def interrupt(request: Request) -> dict:
    _state(request).progress.interrupt()
    return {}


@router.post("/skip")
async def skip(request: Request) -> dict:
    _state(request).progress.skip()
    return {}


# --- options -----------------------------------------------------------------------------------------
@router.get("/options")
async def get_options(request: Request) -> dict[str, Any]:
    state = _state(request)

    def read() -> dict[str, Any]:
        values = state.options.snapshot()
        values["sd_model_checkpoint"] = state.current_checkpoint_title()
        if values.get("sd_checkpoint_hash") is None and values["sd_model_checkpoint"]:
            try:
                entry = state.checkpoint_entry(values["sd_model_checkpoint"], "sd_model_checkpoint")
                values["sd_checkpoint_hash"] = state.cached_sha256(entry.path)
            except Exception:  # listing options must work even with a vanished model
                values["sd_checkpoint_hash"] = None
        return values

    return await run_in_threadpool(read)


@router.post("/options")
async def set_options(request: Request, body: dict[str, Any] = Body(...)) -> None:
    state = _state(request)
    validated = await run_in_threadpool(state.options.validate, body)
    if "sd_vae" in validated:
        await run_in_threadpool(state.vae_name, validated["sd_vae"], "sd_vae")
    if "sd_model_checkpoint" in validated:
        entry = await run_in_threadpool(state.checkpoint_entry, validated["sd_model_checkpoint"],
                                        "sd_model_checkpoint")
        vae = await run_in_threadpool(state.vae_name, validated.get("sd_vae", state.options.get("sd_vae")),
                                      "sd_vae")
        await state.on_device(lambda: state.engine.load(str(entry.path), vae))
        validated["sd_model_checkpoint"] = state.checkpoint_title(entry)  # the hash is known once loaded
        validated["sd_checkpoint_hash"] = state.cached_sha256(entry.path)
    state.options.apply(validated)
    return None


# --- listings ----------------------------------------------------------------------------------------
@router.get("/sd-models", response_model=list[m.SDModelItem])
async def sd_models(request: Request) -> list[dict]:
    state = _state(request)

    def listing() -> list[dict]:
        # A1111's item has no field for "cannot be loaded": such files stay listed (a client may
        # still name one and get the reason) and are named in the server log.
        for e, why in state.catalog.broken_checkpoints(allow_pickle=state.settings.allow_pickle):
            log.warning("checkpoint %s cannot be loaded: %s", e.name, why)
        out = []
        for e in state.catalog.checkpoints():
            sha = state.cached_sha256(e.path) if e.kind == "file" else None
            out.append({"title": state.checkpoint_title(e), "model_name": _model_name(e.name),
                        "hash": sha[:10] if sha else None, "sha256": sha, "filename": str(e.path), "config": None})
        return out

    return await run_in_threadpool(listing)


def _model_name(name: str) -> str:
    return os.path.splitext(name.replace("/", "_").replace("\\", "_"))[0]


@router.get("/sd-vae", response_model=list[m.SDVaeItem])
async def sd_vae(request: Request) -> list[dict]:
    state = _state(request)
    entries = await run_in_threadpool(state.catalog.vaes)
    return [{"model_name": e.name, "filename": str(e.path)} for e in entries]


@router.get("/samplers", response_model=list[m.SamplerItem])
async def samplers() -> list[dict]:
    return [{"name": s.name, "aliases": list(s.aliases),
             "options": {"diffusers_scheduler": s.scheduler_class, **({"uses_ensd": True} if s.stochastic else {})}}
            for s in SAMPLERS]


@router.get("/schedulers", response_model=list[m.SchedulerItem])
async def get_schedulers() -> list[dict]:
    return schedulers()


@router.get("/loras", response_model=list[m.LoraItem])
async def loras(request: Request) -> list[dict]:
    state = _state(request)

    def listing() -> list[dict]:
        out = []
        for e in state.catalog.loras():
            meta = state.lora_metadata(e.path)
            alias = meta.get("ss_output_name") if isinstance(meta.get("ss_output_name"), str) else None
            out.append({"name": e.path.stem, "alias": alias or e.path.stem, "path": str(e.path), "metadata": meta})
        return out

    return await run_in_threadpool(listing)


@router.post("/refresh-loras")
async def refresh_loras(request: Request) -> None:
    # Listings are read from disk on every call; only the metadata cache can be stale.
    _state(request).forget_lora_metadata()


@router.post("/refresh-checkpoints")
async def refresh_checkpoints() -> None:
    return None


@router.post("/refresh-vae")
async def refresh_vae() -> None:
    return None


@router.get("/embeddings", response_model=m.EmbeddingsResponse)
async def embeddings(request: Request) -> dict:
    from lorastudio.interfaces.api.state import safetensors_header

    state = _state(request)

    def listing() -> dict:
        skipped = {}
        for e in state.catalog.embeddings():
            shape, vectors = 0, 0
            header = safetensors_header(e.path) if e.path.suffix == ".safetensors" else None
            if header is not None and header.tensors:
                dims = next(iter(header.tensors.values())).shape
                if dims:
                    vectors, shape = (dims[0], dims[-1]) if len(dims) > 1 else (1, dims[0])
            # Textual inversion is not implemented: embeddings are listed, none is loaded.
            skipped[Path(e.name).stem] = {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None,
                                         "shape": int(shape), "vectors": int(vectors)}
        return {"loaded": {}, "skipped": skipped}

    return await run_in_threadpool(listing)


@router.get("/upscalers", response_model=list[m.UpscalerItem])
async def upscalers(request: Request) -> list[dict]:
    from lorastudio.interfaces.api.extras_routes import upscaler_listing

    return await run_in_threadpool(upscaler_listing, _state(request))


@router.get("/latent-upscale-modes", response_model=list[m.LatentUpscalerModeItem])
async def latent_upscale_modes() -> list[dict]:
    return [{"name": n} for n in LATENT_UPSCALE_MODES]


@router.get("/memory", response_model=m.MemoryResponse)
async def memory() -> dict:
    return await run_in_threadpool(_memory)


def _memory() -> dict:
    import psutil

    ram: dict[str, Any]
    try:
        vm = psutil.virtual_memory()
        # A1111 reports "free" as what can still be allocated (MemAvailable), not MemFree.
        ram = {"free": vm.available, "used": vm.total - vm.available, "total": vm.total}
    except (OSError, RuntimeError, AttributeError) as exc:
        ram = {"error": f"unavailable ({exc})"}
    cuda: dict[str, Any] = {"error": "unavailable"}
    try:
        import torch

        if torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info()
            s = torch.cuda.memory_stats()
            cuda = {
                "system": {"free": free, "used": total - free, "total": total},
                "active": {"current": s.get("active_bytes.all.current", 0), "peak": s.get("active_bytes.all.peak", 0)},
                "allocated": {"current": s.get("allocated_bytes.all.current", 0),
                              "peak": s.get("allocated_bytes.all.peak", 0)},
                "reserved": {"current": s.get("reserved_bytes.all.current", 0),
                             "peak": s.get("reserved_bytes.all.peak", 0)},
                "inactive": {"current": s.get("inactive_split_bytes.all.current", 0),
                             "peak": s.get("inactive_split_bytes.all.peak", 0)},
                "events": {"retries": s.get("num_alloc_retries", 0), "oom": s.get("num_ooms", 0)},
            }
    except Exception as exc:  # a broken driver must not break a status route
        cuda = {"error": str(exc)}
    return {"ram": ram, "cuda": cuda}


# Routes clients probe at start-up (webuiapi asks for /scripts). A1111 lists selectable scripts
# (x/y/z plot) and always-on ones (controlnet) together, by lower-case title.
@router.get("/scripts", response_model=m.ScriptsList)
async def scripts() -> dict:
    return {"txt2img": [XYZ_SCRIPT, "controlnet"], "img2img": [XYZ_SCRIPT, "controlnet"]}


@router.get("/script-info")
async def script_info() -> list:
    from lorastudio.core.xyz_axes import script_info as xyz_info

    return [xyz_info("txt2img"), xyz_info("img2img")]


@router.get("/face-restorers")
async def face_restorers() -> list:
    return []


@router.get("/hypernetworks")
async def hypernetworks() -> list:
    return []


@router.get("/prompt-styles")
async def prompt_styles(request: Request) -> list:
    styles = await run_in_threadpool(_state(request).engine.prompt_styles)
    return [{"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt} for s in styles.values()]
