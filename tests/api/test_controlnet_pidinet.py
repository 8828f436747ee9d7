"""The PiDiNet modules through the API: /controlnet/module_list, /controlnet/detect and a txt2img ControlNet
unit, with table5_pidinet.pth as the published pickle (read only with the studio's allow_pickle)."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from lorastudio.testing.annotator_files import edge_picture, pidinet_state_dict, write_annotator_file


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    from lorastudio.testing.tiny_controlnet import write_controlnet_models_root

    root = tmp_path_factory.mktemp("cn-pidi") / "models"
    write_controlnet_models_root(root, "control_tiny_softedge")
    # as lllyasviel/Annotators publishes it: a pickle, `state_dict` keys prefixed with `module.`
    write_annotator_file(root / "ControlNetPreprocessor" / "lllyasviel" / "Annotators", "table5_pidinet.pth",
                         {"state_dict": {f"module.{k}": v for k, v in pidinet_state_dict(0).items()}})
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
        for m in ("softedge_pidinet", "softedge_pidisafe", "scribble_pidinet"):
            assert detail[m]["runs"] is True and detail[m]["weights"] == ["table5_pidinet.pth"], m
            assert detail[m]["sliders"][0]["name"] == "Resolution", m
        refused = c.post("/controlnet/detect", json={"controlnet_module": "softedge_pidinet", **detect})
        assert refused.status_code in (400, 422) and "table5_pidinet.pth" in refused.text
        assert "allow-pickle" in refused.text
    with studio_client(root, allow_pickle=True) as c:
        for module in ("softedge_pidinet", "scribble_pidinet"):
            r = c.post("/controlnet/detect", json={"controlnet_module": module, **detect})
            assert r.status_code == 200, r.text
            want = run_preprocessor(module, pic, resolution=64, threshold_a=-1, threshold_b=-1, models_root=root,
                                    allow_pickle=True)
            assert want.shape == (64, 96, 3) and want.std() > 5
            assert (decode(r.json()["images"][0]) == want).all(), module  # the PNG carries the map unchanged
        body = {"prompt": "a sticker", "seed": 3, "steps": 2, "width": 64, "height": 64, "sampler_name": "Euler",
                "alwayson_scripts": {"controlnet": {"args": [
                    {"module": "softedge_pidinet", "model": "control_tiny_softedge", "image": b64(pic),
                     "processor_res": 64, "resize_mode": "Just Resize"}]}}}
        r = c.post("/sdapi/v1/txt2img", json=body)
        assert r.status_code == 200, r.text
        assert 'ControlNet 0: "Module: softedge_pidinet, Model: control_tiny_softedge [' in json.loads(
            r.json()["info"])["infotexts"][0]
        # the map steers the picture: the same unit on the plain picture (module none) draws another one
        none = {**body, "alwayson_scripts": {"controlnet": {"args": [
            {**body["alwayson_scripts"]["controlnet"]["args"][0], "module": "none"}]}}}
        assert c.post("/sdapi/v1/txt2img", json=none).json()["images"][0] != r.json()["images"][0]
