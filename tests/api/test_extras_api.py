"""A1111's Extras upscaling routes and the upscaler listing."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import webuiapi  # a dev dependency: imported plainly so that a missing one fails loudly
from PIL import Image


def picture(w=40, h=30, seed=0):
    return Image.fromarray((np.random.RandomState(seed).rand(h, w, 3) * 255).astype(np.uint8))


def b64(im) -> str:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def unb64(s: str):
    return Image.open(io.BytesIO(base64.b64decode(s))).convert("RGB")


def test_extras_single_and_batch(client):
    r = client.post("/sdapi/v1/extra-single-image", json={"image": b64(picture()), "upscaler_1": "Lanczos",
                                                          "upscaling_resize": 2})
    assert r.status_code == 200, r.text
    out = unb64(r.json()["image"])
    assert out.size == (80, 60)
    assert np.array_equal(np.asarray(out), np.asarray(picture().resize((80, 60), Image.Resampling.LANCZOS)))
    assert "Postprocess upscaler: Lanczos" in r.json()["html_info"]

    # to a size, cropped to fill; upscaler 2 blended at half visibility
    r = client.post("/sdapi/v1/extra-batch-images", json={
        "imageList": [{"data": b64(picture()), "name": "a.png"}, {"data": b64(picture(seed=1)), "name": "b.png"}],
        "resize_mode": 1, "upscaling_resize_w": 64, "upscaling_resize_h": 64, "upscaling_crop": True,
        "upscaler_1": "Lanczos", "upscaler_2": "Nearest", "extras_upscaler_2_visibility": 0.5})
    assert r.status_code == 200, r.text
    outs = [unb64(s) for s in r.json()["images"]]
    assert [o.size for o in outs] == [(64, 64), (64, 64)]
    lanczos = picture().resize((85, 64), Image.Resampling.LANCZOS)
    nearest = picture().resize((85, 64), Image.Resampling.NEAREST)
    want = Image.blend(lanczos, nearest, 0.5).crop((10, 0, 74, 64))
    assert np.array_equal(np.asarray(outs[0]), np.asarray(want))


def test_extras_keep_a_stickers_transparency(client):
    rgba = np.asarray(picture(40, 30, seed=4).convert("RGBA")).copy()
    rgba[:, :12, 3] = 0  # clear on the left, half-clear in the middle
    rgba[:, 12:24, 3] = 128
    sticker = Image.fromarray(rgba, "RGBA")
    r = client.post("/sdapi/v1/extra-single-image", json={"image": b64(sticker), "upscaler_1": "Lanczos",
                                                          "upscaling_resize": 2})
    assert r.status_code == 200, r.text
    out = Image.open(io.BytesIO(base64.b64decode(r.json()["image"])))
    assert out.mode == "RGBA" and out.size == (80, 60)
    want = sticker.getchannel("A").resize((80, 60), Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(out.getchannel("A")), np.asarray(want))


@pytest.mark.parametrize("body,field", [({"upscaler_1": "4x-Nothing"}, "4x-Nothing"),
                                        ({"upscaler_1": "Lanczos", "gfpgan_visibility": 0.5}, "gfpgan_visibility"),
                                        ({"upscaler_1": "Lanczos", "upscaling_resize": 50}, "upscaling_resize")])
def test_extras_bad_input_is_named(client, body, field):
    r = client.post("/sdapi/v1/extra-single-image", json={"image": b64(picture()), **body})
    assert r.status_code in (404, 422) and field in r.text, r.text


def test_upscaler_listing_has_model_files_with_their_scale(make_client, settings, engine, tmp_path):
    from safetensors.torch import save_file
    import torch

    root = settings.models_dir
    (root / "ESRGAN").mkdir(exist_ok=True)
    save_file({"w": torch.zeros(1)}, str(root / "ESRGAN" / "2x_Tiny.safetensors"))
    try:
        listed = {u["name"]: u for u in make_client().get("/sdapi/v1/upscalers").json()}
    finally:
        (root / "ESRGAN" / "2x_Tiny.safetensors").unlink()
    assert list(listed)[:3] == ["None", "Lanczos", "Nearest"]
    assert listed["2x_Tiny"]["scale"] == 2 and listed["2x_Tiny"]["model_name"] == "ESRGAN"


def test_webuiapi_extra_single_image_against_a_real_server(server_process, models_root, tmp_path):
    proc = server_process(["--models-dir", str(models_root), "--outdir", str(tmp_path / "outputs"),
                           "--projects-dir", str(tmp_path / "projects")], env={"OMP_NUM_THREADS": "1"})
    proc.wait_up()
    api = webuiapi.WebUIApi(host="127.0.0.1", port=proc.port)
    r = api.extra_single_image(image=picture(), upscaler_1="Lanczos", upscaling_resize=3)
    assert r.image.size == (120, 90)
    r = api.extra_batch_images(images=[picture(), picture(seed=2)], upscaler_1="Nearest", upscaling_resize=2)
    assert [im.size for im in r.images] == [(80, 60), (80, 60)]


@pytest.mark.pixels
def test_extras_and_listing_with_a_model_upscaler(client, settings, spandrel_importable):
    """A tiny ESRGAN in models/ESRGAN, asked for by name: listed with its scale, and Extras' picture is
    the model's output (a plain-torch ESRGAN forward, testing.tiny_upscalers), not a resize."""
    import torch
    from safetensors.torch import save_file

    from lorastudio.testing.pixels import assert_same_picture
    from lorastudio.testing.tiny_upscalers import rrdbnet_forward, rrdbnet_state_dict

    sd = rrdbnet_state_dict(2, seed=3)
    path = settings.models_dir / "ESRGAN" / "2x_TinyApi.safetensors"
    path.parent.mkdir(exist_ok=True)
    save_file(sd, str(path))
    try:
        listed = {u["name"]: u for u in client.get("/sdapi/v1/upscalers").json()}
        r = client.post("/sdapi/v1/extra-single-image", json={"image": b64(picture()), "upscaler_1": "2x_TinyApi",
                                                              "upscaling_resize": 2})
    finally:
        path.unlink()
    assert listed["2x_TinyApi"]["scale"] == 2 and listed["2x_TinyApi"]["model_name"] == "ESRGAN"
    assert r.status_code == 200, r.text
    out = unb64(r.json()["image"])
    x = torch.from_numpy(np.asarray(picture(), dtype=np.float32) / 255).permute(2, 0, 1)[None]
    with torch.no_grad():
        want = rrdbnet_forward(sd, x).clamp(0, 1)[0].permute(1, 2, 0).numpy()
    assert out.size == (80, 60)
    assert_same_picture(want, out)
    assert np.abs(np.asarray(out, float) - np.asarray(picture().resize((80, 60)), float)).max() > 10
    assert "Postprocess upscaler: 2x_TinyApi" in r.json()["html_info"]
