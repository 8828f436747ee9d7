"""The reference units through the ControlNet extension's API shape: webuiapi's ControlNetUnit with
module reference_only and no model, against a real server; /controlnet/module_list lists them model-free."""

from __future__ import annotations

import numpy as np
import requests
import webuiapi  # a dev dependency: imported plainly so that a missing one fails loudly
from PIL import Image


def test_webuiapi_reference_only_unit_against_a_real_server(server_process, tmp_path):
    from lorastudio.testing.tiny_sd import save_sd1_single_file, tiny_sd1_pipeline

    root = tmp_path / "models"
    for d in ("Stable-diffusion", "Lora", "VAE", "ControlNet"):
        (root / d).mkdir(parents=True)
    save_sd1_single_file(tiny_sd1_pipeline(seed=0), root / "Stable-diffusion" / "tiny.safetensors")
    proc = server_process(["--models-dir", str(root), "--outdir", str(tmp_path / "outputs"),
                           "--projects-dir", str(tmp_path / "projects")], env={"OMP_NUM_THREADS": "1"})
    proc.wait_up()
    api = webuiapi.WebUIApi(host="127.0.0.1", port=proc.port, sampler="Euler", steps=3)
    assert {"reference_only", "reference_adain", "reference_adain+attn"} <= set(api.controlnet_module_list())
    detail = requests.get(f"http://127.0.0.1:{proc.port}/controlnet/module_list", timeout=30).json()["module_detail"]
    assert detail["reference_only"]["model_free"] is True and detail["reference_only"]["runs"] is True
    assert detail["reference_adain+attn"]["sliders"] == [
        {"name": "Style Fidelity (only for Balanced mode)", "value": 0.5, "min": 0.0, "max": 1.0}]

    ref = Image.fromarray((np.random.RandomState(1).rand(32, 32, 3) * 255).astype(np.uint8))
    call = dict(prompt="a square", seed=3, width=32, height=32, cfg_scale=5, alwayson_scripts={})
    plain = api.txt2img(**call)
    unit = webuiapi.ControlNetUnit(image=ref, module="reference_only", model="None", threshold_a=0.5)
    r = api.txt2img(**call, controlnet_units=[unit])
    assert r.image.size == (32, 32)
    assert np.abs(np.asarray(r.image, float) - np.asarray(plain.image, float)).max() > 0  # the unit acts
    text = r.info["infotexts"][0]
    assert 'ControlNet 0: "Module: reference_only, Model: None, Weight: 1.0, ' in text and "Threshold A: 0.5" in text
    i2i = api.img2img(images=[r.image], prompt="a square", seed=3, width=32, height=32, denoising_strength=0.5,
                      controlnet_units=[webuiapi.ControlNetUnit(module="reference_adain", model="None")],
                      alwayson_scripts={})  # the init image is the reference
    assert i2i.image.size == (32, 32)
    assert 'ControlNet 0: "Module: reference_adain, Model: None' in i2i.info["infotexts"][0]
