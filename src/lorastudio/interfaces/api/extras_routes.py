"""A1111's "Extras" upscaling: /sdapi/v1/extra-single-image and /sdapi/v1/extra-batch-images, and
the upscaler listing with the model files' scale.

As A1111 (`postprocessing_upscale`): resize by `upscaling_resize` (resize_mode 0) or to
`upscaling_resize_w` x `upscaling_resize_h` (resize_mode 1, cropped to fill when
`upscaling_crop`); upscaler 2 is blended over upscaler 1 with `extras_upscaler_2_visibility`.
Face restoration is not available and is refused when asked for.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from lorastudio.core.errors import InvalidParameter

router = APIRouter(prefix="/sdapi/v1", tags=["A1111"])
MAX_BATCH = 32


class ExtrasOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    resize_mode: int = Field(0, ge=0, le=1)
    show_extras_results: bool = True
    gfpgan_visibility: float = Field(0, ge=0, le=1)
    codeformer_visibility: float = Field(0, ge=0, le=1)
    codeformer_weight: float = Field(0, ge=0, le=1)
    upscaling_resize: float = Field(2, ge=1, le=8)
    upscaling_resize_w: int = Field(512, ge=1, le=16384)
    upscaling_resize_h: int = Field(512, ge=1, le=16384)
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = Field(0, ge=0, le=1)
    upscale_first: bool = False


class ExtrasSingleRequest(ExtrasOptions):
    image: str = Field("", description="Base64 picture")


class ExtrasBatchItem(BaseModel):
    data: str
    name: str = ""


class ExtrasBatchRequest(ExtrasOptions):
    imageList: list[ExtrasBatchItem] = Field(default_factory=list)


def _state(request: Request):
    return request.app.state.api


def upscale_extras(image, opts: ExtrasOptions, upscaler_for, max_pixels: int = 8192 * 8192) -> tuple[Any, str]:
    """One picture through upscaler 1 (and 2, blended), to the asked size; (picture, infotext)."""
    from PIL import Image

    from lorastudio.generation.upscalers import has_alpha

    if opts.gfpgan_visibility or opts.codeformer_visibility:
        raise InvalidParameter("gfpgan_visibility" if opts.gfpgan_visibility else "codeformer_visibility",
                               opts.gfpgan_visibility or opts.codeformer_visibility,
                               "face restoration is not available; leave it at 0")
    image = image.convert("RGBA" if has_alpha(image) else "RGB")  # transparency kept (see upscalers.to_size)
    if opts.resize_mode == 1:
        w, h = opts.upscaling_resize_w, opts.upscaling_resize_h
        k = max(w / image.width, h / image.height) if opts.upscaling_crop else min(w / image.width, h / image.height)
        target = (round(image.width * k), round(image.height * k))
    else:
        target = (round(image.width * opts.upscaling_resize), round(image.height * opts.upscaling_resize))
    if target[0] * target[1] > max_pixels:
        raise InvalidParameter("upscaling_resize" if opts.resize_mode == 0 else "upscaling_resize_w",
                               f"{target[0]}x{target[1]}", f"the result may hold at most {max_pixels} pixels")
    info: dict[str, Any] = {}
    if opts.upscaler_1 in ("None", ""):
        out = image
    else:
        out = upscaler_for(opts.upscaler_1)(image, *target)
        info["Postprocess upscale by" if opts.resize_mode == 0 else "Postprocess upscale to"] = (
            opts.upscaling_resize if opts.resize_mode == 0 else f"{target[0]}x{target[1]}")
        info["Postprocess upscaler"] = opts.upscaler_1
    if opts.upscaler_2 not in ("None", "") and opts.extras_upscaler_2_visibility > 0:
        second = upscaler_for(opts.upscaler_2)(image, *target)
        out = Image.blend(out.resize(target), second, opts.extras_upscaler_2_visibility)
        info["Postprocess upscaler 2"] = opts.upscaler_2
    if opts.resize_mode == 1 and opts.upscaling_crop and out.size != (opts.upscaling_resize_w, opts.upscaling_resize_h):
        w, h = opts.upscaling_resize_w, opts.upscaling_resize_h
        left, top = (out.width - w) // 2, (out.height - h) // 2
        out = out.crop((left, top, left + w, top + h))
    return out, ", ".join(f"{k}: {v}" for k, v in info.items())


def _upscaler_cache(state):
    """name -> (picture, width, height) -> picture, from the engine's upscaler list (models stay loaded)."""
    return state.engine.image_upscalers().to_size


@router.post("/extra-single-image")
async def extra_single_image(request: Request, body: ExtrasSingleRequest) -> dict:
    from lorastudio.interfaces.api.images import decode_image, encode_png

    state = _state(request)
    limits = state.limits

    def run() -> dict:
        image = decode_image(body.image, "image", max_bytes=limits.max_image_bytes, max_pixels=limits.max_image_pixels)
        out, info = upscale_extras(image, body, _upscaler_cache(state), limits.max_image_pixels)
        return {"html_info": info, "image": encode_png(out, info or None)}

    return await state.on_device(run)


@router.post("/extra-batch-images")
async def extra_batch_images(request: Request, body: ExtrasBatchRequest) -> dict:
    from lorastudio.interfaces.api.images import decode_image, encode_png

    state = _state(request)
    limits = state.limits
    if len(body.imageList) > MAX_BATCH:
        raise InvalidParameter("imageList", f"<{len(body.imageList)} images>", f"at most {MAX_BATCH}")

    def run() -> dict:
        get = _upscaler_cache(state)
        images, info = [], ""
        for i, item in enumerate(body.imageList):
            image = decode_image(item.data, f"imageList.{i}.data", max_bytes=limits.max_image_bytes,
                                 max_pixels=limits.max_image_pixels)
            out, info = upscale_extras(image, body, get, limits.max_image_pixels)
            images.append(encode_png(out, info or None))
        return {"html_info": info, "images": images}

    return await state.on_device(run)


def upscaler_listing(state) -> list[dict]:
    """A1111's /sdapi/v1/upscalers: the built-ins, then the model files with their scale."""
    from lorastudio.generation.upscalers import upscaler_listing as listing

    return listing(state.engine.image_upscalers())
