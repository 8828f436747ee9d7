"""The published `webuiapi` client against a real server process on 127.0.0.1."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import webuiapi  # a dev dependency: imported plainly so that a missing one fails loudly
from PIL import Image, ImageDraw

USER, PASSWORD = "studio", "pw-for-tests"


@pytest.fixture
def server(server_process, models_root, tmp_path):
    # The password travels in the environment, not on the command line (visible in `ps`).
    proc = server_process(["--models-dir", str(models_root), "--outdir", str(tmp_path / "outputs"),
                           "--projects-dir", str(tmp_path / "projects")],
                          env={"LORASTUDIO_API_AUTH": f"{USER}:{PASSWORD}", "OMP_NUM_THREADS": "1"})
    proc.wait_up(auth=(USER, PASSWORD))
    return proc


def test_webuiapi_against_a_real_server(server):
    # Without credentials a real process answers 401 on every route, docs included.
    for path in ("/sdapi/v1/sd-models", "/openapi.json", "/docs"):
        assert httpx.get(server.url + path, timeout=10).status_code == 401
    assert httpx.post(server.url + "/sdapi/v1/txt2img", json={}, timeout=10).status_code == 401

    api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port, sampler="Euler a", steps=2,
                            username=USER, password=PASSWORD)
    models = api.get_sd_models()
    # The bundled base model is listed after the user's checkpoints, as the catalog does out of the box.
    assert [m["model_name"] for m in models] == ["tiny", "lorastudio-shapes-v1"]
    assert [lo["alias"] for lo in api.get_loras()] == ["MyStyle"]

    result = api.txt2img(prompt="a tiny cat", negative_prompt="blurry", seed=77, width=32, height=32,
                         batch_size=2)
    assert len(result.images) == 2 and result.image.size == (32, 32)
    assert result.info["all_seeds"] == [77, 78] and result.info["sampler_name"] == "Euler a"
    assert result.parameters["prompt"] == "a tiny cat"

    info = api.png_info(result.images[1])
    assert "Seed: 78" in info.info and "Negative prompt: blurry" in info.info

    i2i = api.img2img(images=[result.image], prompt="a tiny dog", seed=5, width=32, height=32,
                      denoising_strength=0.5)
    assert i2i.image.size == (32, 32) and i2i.info["denoising_strength"] == 0.5
    assert "Denoising strength: 0.5," in i2i.info["infotexts"][0] and i2i.parameters["init_images"] is None
    mask = Image.new("L", (32, 32), 0)
    ImageDraw.Draw(mask).rectangle((0, 0, 11, 31), fill=255)
    inpainted = api.img2img(images=[result.image], mask_image=mask, inpaint_full_res=False, inpainting_fill=1,
                            prompt="a tiny dog", seed=5, width=32, height=32, denoising_strength=0.9)
    kept = np.asarray(inpainted.image.convert("RGB"))[:, 22:]
    assert np.array_equal(kept, np.asarray(result.image.convert("RGB"))[:, 22:])
    # webuiapi's defaults ("Only masked", padding 0) with the rest of A1111's inpainting and variation fields
    only = api.img2img(images=[result.image], mask_image=mask, prompt="x", width=32, height=32, seed=5,
                       inpaint_full_res=True, inpaint_full_res_padding=4, inpainting_fill=2, mask_blur=2,
                       subseed=9, subseed_strength=0.5, denoising_strength=0.9, alwayson_scripts={})
    text = only.info["infotexts"][0]
    assert "Variation seed: 9, Variation seed strength: 0.5," in text
    assert "Mask blur: 2, Inpaint area: Only masked, Masked area padding: 4, Masked content: latent noise" in text
    kept = np.asarray(only.image.convert("RGB"))[:, 18:]  # blur 2 reaches 5 px: columns 17 on are the original
    assert np.array_equal(kept, np.asarray(result.image.convert("RGB"))[:, 18:])

    # The hires fix and variation seeds, as webuiapi sends them (every hires field, "Use same" as None).
    hires = api.txt2img(prompt="a tiny cat", seed=77, width=32, height=32, enable_hr=True, hr_scale=1.5,
                        hr_upscaler=webuiapi.HiResUpscaler.LatentBicubic, denoising_strength=0.6,
                        subseed=5, subseed_strength=0.0)
    assert hires.image.size == (48, 48)
    assert "Hires upscale: 1.5, Hires upscaler: Latent (bicubic)" in hires.info["infotexts"][0]
    varied = api.txt2img(prompt="a tiny cat", seed=77, width=32, height=32, subseed=5, subseed_strength=0.3)
    assert varied.info["subseed_strength"] == 0.3 and "Variation seed: 5," in varied.info["infotexts"][0]

    # The X/Y/Z plot as webuiapi sends a script: by name, with A1111 1.10's positional script_args
    # (X = axis 1, Seed; Y = axis 7, Prompt S/R; draw legend, include sub-images). alwayson_scripts is
    # passed because webuiapi's default dict is shared between calls.
    plot = api.txt2img(prompt="a tiny cat", seed=77, width=32, height=32, script_name="x/y/z plot",
                       script_args=[1, "77, 78", [], 7, "cat, dog", [], 0, "", [], True, True, False, False,
                                    False, False, False, 0, False], alwayson_scripts={})
    assert len(plot.images) == 5 and plot.info["index_of_first_image"] == 1
    assert plot.images[0].width == 64 + 32 * 3 // 4 and plot.images[0].height > 64  # 2x2 under its legend
    grid_info = api.png_info(plot.images[0]).info
    assert ('Script: X/Y/Z plot, X Type: Seed, X Values: "77, 78", Fixed X Values: "77, 78", Y Type: Prompt S/R, '
            'Y Values: "cat, dog", Version: ') in grid_info
    dog78 = api.txt2img(prompt="a tiny dog", seed=78, width=32, height=32, alwayson_scripts={})
    assert np.array_equal(np.asarray(plot.images[4]), np.asarray(dog78.image))  # the cell is the plain request
    assert plot.info["infotexts"][4] == dog78.info["infotexts"][0]

    with pytest.raises(RuntimeError) as err:
        api.txt2img(prompt="x", width=32, height=32, restore_faces=True)
    assert err.value.args[0] == 422 and "restore_faces" in err.value.args[1]

    api.set_options({"CLIP_stop_at_last_layers": 2, "some_extension_option": "kept"})
    options = api.get_options()
    assert options["CLIP_stop_at_last_layers"] == 2 and options["some_extension_option"] == "kept"
    api.util_set_model("tiny")
    assert api.util_get_current_model().startswith("tiny.safetensors [")
    again = api.txt2img(prompt="a tiny cat", seed=77, width=32, height=32)
    assert "Clip skip: 2" in again.info["infotexts"][0]
    assert api.get_progress()["state"]["job_count"] == 0
