"""lineart / softedge detectors through the API: /controlnet/module_list, /controlnet/detect and a
txt2img ControlNet unit, with the studio's allow_pickle passed down to the detector's weights."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from lorastudio.testing.annotator_files import edge_picture, hed_state_dict, lineart_state_dict, write_annotator_file


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    from lorastudio.testing.tiny_controlnet import write_controlnet_models_root

    root = tmp_path_factory.mktemp("cn-lines") / "models"
    write_controlnet_models_root(root, "control_tiny_lineart")
    # HED as a .safetensors twin (no permission needed), line art as the published .pth pickle
    write_annotator_file(root / "ControlNetPreprocessor", "ControlNetHED.pth", hed_state_dict(0), safetensors=True)
    write_annotator_file(root / "ControlNetPreprocessor" / "lllyasviel" / "Annotators", "sk_model.pth",
                         lineart_state_dict(1))
    return root


def b64(arr) -> str:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def decode(data: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))))


def test_detect_and_txt2img_unit(root, studio_client):
    from lorastudio.generation.preprocessors import run_preprocessor

    pic = edge_picture(64, 96)
    detect = {"controlnet_input_images": [b64(pic)], "controlnet_processor_res": 64}
    with studio_client(root) as c:
        detail = c.get("/controlnet/module_list").json()["module_detail"]
        for m in ("lineart_realistic", "lineart_coarse", "lineart_anime", "softedge_hed", "softedge_hedsafe"):
            assert detail[m]["runs"] is True and detail[m]["sliders"][0]["name"] == "Resolution", m
        assert detail["softedge_hed"]["weights"] == ["ControlNetHED.pth"] and detail["seg_ofade20k"]["runs"] is False
        r = c.post("/controlnet/detect", json={"controlnet_module": "softedge_hed", **detect})
        assert r.status_code == 200, r.text
        want = run_preprocessor("softedge_hed", pic, resolution=64, threshold_a=-1, threshold_b=-1, models_root=root)
        assert (decode(r.json()["images"][0]) == want).all()  # the PNG carries the map unchanged
        refused = c.post("/controlnet/detect", json={"controlnet_module": "lineart_realistic", **detect})
        assert refused.status_code in (400, 422) and "sk_model.pth" in refused.text and "allow-pickle" in refused.text
    with studio_client(root, allow_pickle=True) as c:
        r = c.post("/controlnet/detect", json={"controlnet_module": "lineart_realistic", **detect})
        lines = decode(r.json()["images"][0])
        assert lines.shape == (64, 96, 3) and lines.std() > 5
        body = {"prompt": "a sticker", "seed": 3, "steps": 2, "width": 64, "height": 64, "sampler_name": "Euler",
                "alwayson_scripts": {"controlnet": {"args": [
                    {"module": "lineart_realistic", "model": "control_tiny_lineart", "image": b64(pic),
                     "processor_res": 64, "resize_mode": "Just Resize"}]}}}
        r = c.post("/sdapi/v1/txt2img", json=body)
        assert r.status_code == 200, r.text
        assert 'ControlNet 0: "Module: lineart_realistic, Model: control_tiny_lineart [' in json.loads(
            r.json()["info"])["infotexts"][0]
        # the map steers the picture: the same unit on the plain picture (module none) draws another one
        none = {**body, "alwayson_scripts": {"controlnet": {"args": [
            {**body["alwayson_scripts"]["controlnet"]["args"][0], "module": "none"}]}}}
        assert c.post("/sdapi/v1/txt2img", json=none).json()["images"][0] != r.json()["images"][0]
