"""The ControlNet extension's own routes: /controlnet/model_list, module_list, detect, version, settings."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool

from lorastudio.core.errors import InvalidParameter

router = APIRouter(prefix="/controlnet", tags=["ControlNet"])

# The extension's API version (scripts/api.py); clients check it before sending units.
API_VERSION = 2
MAX_DETECT = 16


def _state(request: Request):
    return request.app.state.api


@router.get("/version")
async def version() -> dict:
    return {"version": API_VERSION}


@router.get("/settings")
async def settings() -> dict:
    return {"control_net_unit_count": 3}


@router.get("/model_list")
async def model_list(request: Request, update: bool = True) -> dict:
    from lorastudio.generation.controlnet_units import controlnet_title
    from lorastudio.models.controlnet import controlnet_entries

    root = _state(request).catalog.root.root

    def listing() -> dict:
        return {"model_list": [controlnet_title(e.path) for e in controlnet_entries(root)]}

    return await run_in_threadpool(listing)


@router.get("/module_list")
async def module_list(alias_names: bool = False) -> dict:
    from lorastudio.generation.preprocessors import preprocessors

    table = preprocessors()
    detail: dict[str, Any] = {}
    for name, pre in table.items():
        sliders = [{"name": s.label, "value": s.value, "min": s.minimum, "max": s.maximum}
                   for s in (pre.resolution, pre.threshold_a, pre.threshold_b) if s is not None]
        # model_free as the extension reports it; lorastudio's own fields: the detector files a module
        # reads, and whether lorastudio runs it ("runs": false where it lacks the detector)
        detail[name] = {"model_free": pre.run is not None and not pre.weights, "sliders": sliders,
                        "weights": list(pre.weights), "runs": pre.runs}
    return {"module_list": list(table), "module_detail": detail}


class DetectRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    controlnet_module: str = "none"
    controlnet_input_images: list[str] | None = None
    controlnet_images: list[str] | None = None  # what older clients (webuiapi) send
    controlnet_processor_res: int = -1
    controlnet_threshold_a: float = -1
    controlnet_threshold_b: float = -1


@router.post("/detect")
async def detect(request: Request, body: DetectRequest) -> dict:
    """Run a preprocessor on pictures: {controlnet_module, controlnet_input_images, controlnet_processor_res,
    controlnet_threshold_a, controlnet_threshold_b} -> {images, info}, and `poses` (OpenPose JSON, one per
    picture) for the openpose modules, as the extension returns them."""
    import numpy as np
    from PIL import Image

    from lorastudio.generation.controlnet_units import ControlNetUnit
    from lorastudio.generation.preprocessors import detect as run_detector
    from lorastudio.interfaces.api.images import decode_image, encode_png

    state = _state(request)
    limits = state.limits
    images = body.controlnet_input_images or body.controlnet_images or []
    if not images:
        raise InvalidParameter("controlnet_input_images", images, "give at least one base64 picture")
    if len(images) > MAX_DETECT:
        raise InvalidParameter("controlnet_input_images", f"<{len(images)} images>", f"at most {MAX_DETECT}")
    unit = ControlNetUnit(module=body.controlnet_module, processor_res=body.controlnet_processor_res,
                          threshold_a=body.controlnet_threshold_a,
                          threshold_b=body.controlnet_threshold_b).with_slider_defaults()

    def run() -> tuple[list[str], list[dict]]:
        out, poses = [], []
        for i, data in enumerate(images):
            im = decode_image(data, f"controlnet_input_images.{i}", max_bytes=limits.max_image_bytes,
                              max_pixels=limits.max_image_pixels)
            detected, extra = run_detector(unit.module, np.asarray(im.convert("RGB")), resolution=unit.processor_res,
                                           threshold_a=unit.threshold_a, threshold_b=unit.threshold_b,
                                           models_root=state.catalog.root.root,
                                           allow_pickle=state.settings.allow_pickle,
                                           # the engine's device and read cache: the web UI's preview and the
                                           # next generation share one read of the detector file
                                           device=state.engine.device, cache=state.engine.annotator_cache)
            out.append(encode_png(Image.fromarray(detected), None))
            if extra is not None and "openpose" in unit.module:
                poses.append(extra)
        return out, poses

    images_out, poses = await run_in_threadpool(run)
    response: dict[str, Any] = {"info": "Success", "images": images_out}
    if poses:
        response["poses"] = poses
    return response
