"""/sdapi/v1/img2img against a tiny real SD 1.x checkpoint."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from lorastudio.testing.pixels import assert_same_picture

# What webuiapi 0.9 sends for img2img(images=[...], prompt=..., steps=2, ...): every field, most at defaults.
WEBUIAPI_IMG2IMG = {
    "resize_mode": 0, "denoising_strength": 0.6, "mask_blur": 4, "inpainting_fill": 0, "inpaint_full_res": True,
    "inpaint_full_res_padding": 0, "inpainting_mask_invert": 0, "initial_noise_multiplier": 1, "prompt": "a red cat",
    "styles": [], "seed": 1234, "subseed": -1, "subseed_strength": 0, "seed_resize_from_h": 0,
    "seed_resize_from_w": 0, "batch_size": 2, "n_iter": 2, "steps": 2, "cfg_scale": 7.0, "image_cfg_scale": 1.5,
    "width": 32, "height": 32, "restore_faces": False, "tiling": False, "do_not_save_samples": False,
    "do_not_save_grid": False, "negative_prompt": "blurry", "eta": 1.0, "s_churn": 0, "s_tmax": 0, "s_tmin": 0,
    "s_noise": 1, "override_settings": {}, "override_settings_restore_afterwards": True, "sampler_name": "Euler a",
    "scheduler": "automatic", "sampler_index": "Euler a", "include_init_images": False, "script_name": None,
    "script_args": [], "send_images": True, "save_images": False, "alwayson_scripts": {},
}
SMALL = {"prompt": "a cat", "steps": 2, "width": 32, "height": 32, "seed": 7, "sampler_name": "Euler",
         "denoising_strength": 0.9}


def _b64(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")).astype(np.int16)


def _loc(response) -> list[str]:
    return [".".join(str(p) for p in d["loc"]) for d in response.json()["detail"]]


@pytest.fixture(scope="module")
def init_b64() -> str:
    gradient = (np.indices((32, 32)).sum(0) * 4 % 256).astype(np.uint8)
    return _b64(Image.fromarray(gradient).convert("RGB"))


@pytest.fixture(scope="module")
def mask_b64() -> str:
    mask = Image.new("L", (32, 32), 0)
    ImageDraw.Draw(mask).rectangle((0, 0, 11, 31), fill=255)  # repaint the left 12 columns
    return _b64(mask)


@pytest.mark.pixels
def test_img2img_accepts_a_full_webuiapi_payload_and_answers_like_a1111(client, init_b64):
    r = client.post("/sdapi/v1/img2img", json={**WEBUIAPI_IMG2IMG, "init_images": [init_b64]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["images"]) == 4
    # As A1111: the inputs are not echoed back unless include_init_images is set.
    assert body["parameters"]["init_images"] is None and body["parameters"]["denoising_strength"] == 0.6
    info = json.loads(body["info"])
    assert info["all_seeds"] == [1234, 1235, 1236, 1237] and info["denoising_strength"] == 0.6
    assert info["extra_generation_params"]["Denoising strength"] == "0.6"
    assert all("Denoising strength: 0.6," in t for t in info["infotexts"])
    assert "Mask blur" not in info["infotexts"][0]  # no mask, no mask settings
    back = client.post("/sdapi/v1/png-info", json={"image": body["images"][2]}).json()
    assert back["info"] == info["infotexts"][2] and back["parameters"]["Denoising strength"] == "0.6"
    # Image 3 of a seed-1234 run is image 1 of a seed-1236 run, whatever the batching (to the rounding
    # of batched vs single kernels, lorastudio.testing.pixels).
    alone = client.post("/sdapi/v1/img2img", json={**WEBUIAPI_IMG2IMG, "init_images": [init_b64], "seed": 1236,
                                                   "batch_size": 1, "n_iter": 1, "include_init_images": True})
    assert_same_picture(_pixels(alone.json()["images"][0]), _pixels(body["images"][2]))
    assert alone.json()["parameters"]["init_images"] == [init_b64]


def test_strength_changes_the_picture(client, init_b64):
    def run(strength):
        r = client.post("/sdapi/v1/img2img", json={**SMALL, "init_images": [init_b64],
                                                   "denoising_strength": strength})
        return _pixels(r.json()["images"][0])

    assert not np.array_equal(run(0.1), run(0.9))


def test_inpainting_keeps_the_unmasked_pixels(client, init_b64, mask_b64):
    r = client.post("/sdapi/v1/img2img", json={**SMALL, "init_images": [init_b64], "mask": mask_b64,
                                                "inpaint_full_res": False, "inpainting_fill": 1})
    assert r.status_code == 200, r.text
    out, orig = _pixels(r.json()["images"][0]), _pixels(init_b64)
    assert np.array_equal(out[:, 22:], orig[:, 22:])  # past the blur's 10-pixel reach: the original
    assert np.abs(out[:, :6] - orig[:, :6]).mean() > 10
    info = json.loads(r.json()["info"])
    assert "Denoising strength: 0.9, Mask blur: 4," in info["infotexts"][0]
    # A1111's API defaults: inpaint area "Only masked" with padding 0, masked content "fill".
    only_masked = client.post("/sdapi/v1/img2img", json={**SMALL, "init_images": [init_b64], "mask": mask_b64})
    assert only_masked.status_code == 200, only_masked.text
    text = json.loads(only_masked.json()["info"])["infotexts"][0]
    assert "Mask blur: 4, Inpaint area: Only masked, Masked area padding: 0, Masked content: fill," in text
    assert np.array_equal(_pixels(only_masked.json()["images"][0])[:, 22:], orig[:, 22:])
    # A1111 1.8+'s `infotext` field: every setting from that text, the inpainting ones included (here
    # "Whole picture" and "original", where the API's own defaults are "Only masked" and "fill")
    again = client.post("/sdapi/v1/img2img", json={"init_images": [init_b64], "mask": mask_b64,
                                                   "infotext": info["infotexts"][0]})
    assert again.status_code == 200, again.text
    assert np.array_equal(_pixels(again.json()["images"][0]), out)
    # resize mode 3 (latent upscale) and a soft latent mask are honoured, not refused
    for extra in ({"resize_mode": 3}, {"mask": mask_b64, "inpaint_full_res": False, "mask_round": False}):
        r = client.post("/sdapi/v1/img2img", json={**SMALL, "init_images": [init_b64], **extra})
        assert r.status_code == 200, (extra, r.text)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # PIL warns, we refuse
@pytest.mark.parametrize("extra, field, words", [
    ({"denoising_strength": 1.5}, "denoising_strength", "less than or equal to 1"),
    ({"denoising_strength": -0.5}, "denoising_strength", "greater than or equal to 0"),
    ({"init_images": ["aGVsbG8gd29ybGQ="]}, "init_images.0", "not a readable image"),
    ({"init_images": ["not base64!"]}, "init_images.0", "base64"),
    ({"init_images": ["{huge}"]}, "init_images.0", "decompression bomb"),  # PIL's own limit
    ({"init_images": ["{ok}", "{bomb}"]}, "init_images.1", "pixel limit"),  # ours, lower
    ({"mask": "{bomb}", "inpaint_full_res": False}, "mask", "pixel limit"),
    ({"init_images": []}, "init_images", "at least one"),
    ({"init_images": ["{ok}", "{ok}"], "batch_size": 3}, "init_images", "one per image"),
    ({"initial_noise_multiplier": 0.5}, "initial_noise_multiplier", "not supported"),
    ({"inpainting_fill": 4}, "inpainting_fill", "less than or equal to 3"),
])
def test_bad_input_is_422_naming_the_field(client, imgs, init_b64, extra, field, words):
    subs = {"{huge}": imgs.bomb(), "{bomb}": imgs.bomb(10_000, 10_000), "{ok}": init_b64}
    extra = {k: ([subs.get(x, x) for x in v] if isinstance(v, list) else subs.get(v, v)) for k, v in extra.items()}
    r = client.post("/sdapi/v1/img2img", json={**SMALL, "init_images": [init_b64], **extra})
    assert r.status_code == 422, r.text
    assert any(loc.endswith(field) for loc in _loc(r)), r.text
    assert words in r.text


def test_nan_strength_is_422(client, init_b64):
    raw = '{"init_images": ["%s"], "steps": 2, "width": 32, "height": 32, "denoising_strength": NaN}' % init_b64
    r = client.post("/sdapi/v1/img2img", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422 and any(loc.endswith("denoising_strength") for loc in _loc(r)), r.text


def test_save_images_go_to_the_img2img_folders(client, init_b64, settings):
    r = client.post("/sdapi/v1/img2img", json={**SMALL, "init_images": [init_b64], "batch_size": 2,
                                                "save_images": True})
    assert r.status_code == 200 and len(r.json()["images"]) == 3  # grid first, as A1111
    assert len(list((settings.outdir / "img2img-images").rglob("*-7.png"))) == 1
    assert len(list((settings.outdir / "img2img-grids").rglob("*.png"))) == 1
