"""The ControlNet extension's API shape: alwayson_scripts units, /controlnet/* routes, infotexts."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import webuiapi  # a dev dependency: imported plainly so that a missing one fails loudly
from PIL import Image


@pytest.fixture(scope="module")
def cn_root(tmp_path_factory):
    from lorastudio.testing.tiny_controlnet import write_controlnet_models_root

    root = tmp_path_factory.mktemp("cn-api") / "models"
    write_controlnet_models_root(root, "control_tiny")
    return root


def shapes_picture(size=64) -> Image.Image:
    im = np.zeros((size, size, 3), np.uint8)
    im[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = (230, 120, 40)
    return Image.fromarray(im)


def b64(im) -> str:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture
def cn_client(cn_root, tmp_path):
    from fastapi.testclient import TestClient

    from lorastudio.core.settings import StudioSettings
    from lorastudio.interfaces.api.server import create_app

    settings = StudioSettings(models_dir=cn_root, outdir=tmp_path / "out", projects_dir=tmp_path / "p", device="cpu",
                              include_bundled=False)
    with TestClient(create_app(settings, poll_interval_s=0.05), base_url="http://127.0.0.1:7860") as c:
        yield c


def test_routes_and_alwayson_units(cn_client):
    models = cn_client.get("/controlnet/model_list").json()["model_list"]
    assert len(models) == 1 and models[0].startswith("control_tiny [") and len(models[0]) == len("control_tiny [12345678]")
    modules = cn_client.get("/controlnet/module_list").json()
    assert {"none", "canny", "openpose"} <= set(modules["module_list"])
    assert modules["module_detail"]["canny"]["sliders"][1]["value"] == 100
    det = cn_client.post("/controlnet/detect", json={"controlnet_module": "canny", "controlnet_input_images":
                                                     [b64(shapes_picture())], "controlnet_processor_res": 64}).json()
    edges = np.asarray(Image.open(io.BytesIO(base64.b64decode(det["images"][0]))))
    assert edges.shape == (64, 64, 3) and set(np.unique(edges)) == {0, 255}

    body = {"prompt": "a square", "seed": 4, "steps": 2, "width": 64, "height": 64, "sampler_name": "Euler",
            "alwayson_scripts": {"controlnet": {"args": [
                {"module": "canny", "model": models[0], "image": b64(shapes_picture()), "weight": 0.8,
                 "resize_mode": "Just Resize", "pixel_perfect": True}]}}}
    r = cn_client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    text = info["infotexts"][0]
    assert f'ControlNet 0: "Module: canny, Model: {models[0]}, Weight: 0.8, Resize Mode: Just Resize, ' in text
    assert "Pixel Perfect: True" in text and "Processor Res: 64," in text  # pixel perfect: the size, not the slider
    assert info["extra_generation_params"]["ControlNet 0"].startswith("Module: canny")
    plain = cn_client.post("/sdapi/v1/txt2img", json={**body, "alwayson_scripts": {}}).json()
    assert plain["images"][0] != r.json()["images"][0]

    # png-info reads the unit back as A1111 does (the quoted value, whole)
    back = cn_client.post("/sdapi/v1/png-info", json={"image": r.json()["images"][0]}).json()
    from lorastudio.generation.controlnet_units import parse_unit

    assert back["info"] == text
    unit = parse_unit(back["parameters"]["ControlNet 0"])
    assert (unit.module, unit.model, unit.weight, unit.pixel_perfect) == ("canny", models[0], 0.8, True)


@pytest.mark.parametrize("bad,field", [
    ({"model": "control_tiy"}, "control_tiny"),
    ({"module": "openpose"}, "body_pose_model.pth"),
    ({"guidance_start": 0.9, "guidance_end": 0.1}, "guidance_start"),
    ({"control_mode": "Loud"}, "control_mode"),
])
def test_bad_units_are_named(cn_client, bad, field):
    unit = {"module": "none", "model": "control_tiny", "image": b64(shapes_picture()), **bad}
    r = cn_client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 2, "width": 64, "height": 64,
                                                  "alwayson_scripts": {"ControlNet": {"args": [unit]}}})
    assert r.status_code in (404, 422) and field in r.text, r.text
    r = cn_client.post("/sdapi/v1/txt2img", json={"prompt": "x", "alwayson_scripts": {"ADetailer": {"args": []}}})
    assert r.status_code == 422 and "ADetailer" in r.text


def test_webuiapi_controlnet_unit_against_a_real_server(server_process, cn_root, tmp_path):
    proc = server_process(["--models-dir", str(cn_root), "--outdir", str(tmp_path / "outputs"),
                           "--projects-dir", str(tmp_path / "projects")], env={"OMP_NUM_THREADS": "1"})
    proc.wait_up()
    api = webuiapi.WebUIApi(host="127.0.0.1", port=proc.port, sampler="Euler", steps=2)
    model = api.controlnet_model_list()[0]
    assert "canny" in api.controlnet_module_list()
    unit = webuiapi.ControlNetUnit(image=shapes_picture(), module="canny", model=model, processor_res=64,
                                   threshold_a=100, threshold_b=200, pixel_perfect=False, control_mode=1)
    # alwayson_scripts={}: webuiapi writes the units into its shared default dict, which would send
    # them again with every later call in this process (other tests use the client too)
    r = api.txt2img(prompt="a square", seed=3, width=64, height=64, controlnet_units=[unit], alwayson_scripts={})
    assert r.image.size == (64, 64)
    assert f'ControlNet 0: "Module: canny, Model: {model}, Weight: 1.0, Resize Mode: Resize and Fill' in r.info["infotexts"][0]
    assert "Control Mode: My prompt is more important" in r.info["infotexts"][0]
    i2i = api.img2img(images=[r.image], prompt="a square", seed=3, width=64, height=64, denoising_strength=0.5,
                      controlnet_units=[webuiapi.ControlNetUnit(module="none", model=model)], alwayson_scripts={})  # the init image controls
    assert i2i.image.size == (64, 64) and "ControlNet 0: " in i2i.info["infotexts"][0]
    detected = api.controlnet_detect([shapes_picture()], module="canny", processor_res=64, threshold_a=100,
                                     threshold_b=200)
    assert len(detected.images) == 1 and detected.image.size == (64, 64)
