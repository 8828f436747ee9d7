"""The Extras page (A1111's single-picture upscaling) in Chromium against a real server: the
upscaler lists, resize by a factor and to a size, upscaler 2 blended, a sticker's transparency kept,
an error named on the form, and the result sent to img2img."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
from PIL import Image
from playwright.sync_api import expect

TIMEOUT = 120_000


def sticker(w=40, h=30) -> Image.Image:
    rng = np.random.RandomState(7)
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[..., :3] = rng.rand(h, w, 3) * 255
    rgba[:, 10:30, 3] = 255  # opaque in the middle, clear at the sides, a half-clear stripe
    rgba[5:10, :, 3] = 128
    return Image.fromarray(rgba, "RGBA")


def _result(page) -> Image.Image:
    data = page.locator("#extras-result figure img").get_attribute("src").split(",", 1)[1]
    return Image.open(io.BytesIO(base64.b64decode(data)))


def test_upscale_a_sticker_by_a_factor_then_to_a_size_and_send_it_on(open_page, tmp_path, shots):
    page = open_page()
    page.click("[data-tab=extras]")
    form = "#extras-form"
    names = page.locator(f"{form} [name=upscaler_1] option").all_inner_texts()
    assert names[:3] == ["None", "Lanczos", "Nearest"]  # /sdapi/v1/upscalers, A1111's order
    expect(page.locator(f"{form} [name=upscaler_1]")).to_have_value("Lanczos")  # no model file in this folder
    expect(page.locator("#extras-run")).to_be_disabled()

    path = tmp_path / "stamp.png"
    sticker().save(path)
    page.set_input_files(f"{form} [name=extras_file]", str(path))
    expect(page.locator("#extras-source-size")).to_have_text("40 × 30")
    page.fill(f"{form} [name=upscaling_resize]", "2")
    page.select_option(f"{form} [name=upscaler_2]", "Nearest")
    page.fill(f"{form} [name=extras_upscaler_2_visibility]", "0.5")
    with page.expect_request(lambda r: r.url.endswith("/sdapi/v1/extra-single-image")) as sent:
        page.click("#extras-run")
    body = json.loads(sent.value.post_data)
    assert {k: body[k] for k in ("resize_mode", "upscaling_resize", "upscaler_1", "upscaler_2",
                                 "extras_upscaler_2_visibility")} == {
        "resize_mode": 0, "upscaling_resize": 2, "upscaler_1": "Lanczos", "upscaler_2": "Nearest",
        "extras_upscaler_2_visibility": 0.5}
    expect(page.locator("#extras-result figure img")).to_have_js_property("naturalWidth", 80, timeout=TIMEOUT)
    out = _result(page)
    assert out.mode == "RGBA" and out.size == (80, 60)
    # A1111's Extras blend of the two upscalers, here with the alpha kept: PIL's own resizes and blend
    src = sticker()
    want = Image.blend(src.resize((80, 60), Image.Resampling.LANCZOS), src.resize((80, 60), Image.Resampling.NEAREST),
                       0.5)
    assert np.array_equal(np.asarray(out), np.asarray(want))
    expect(page.locator("#extras-result pre.infotext")).to_contain_text("Postprocess upscaler 2: Nearest")
    page.screenshot(path=str(shots / "extras-en.png"), full_page=True)

    # To a size, cropped to fill: 40 x 30 -> 64 x 64 means 85 x 64 cut to the middle
    page.check(f"{form} [name=resize_mode][value='1']")
    expect(page.locator("#extras-to")).to_be_visible()
    page.fill(f"{form} [name=upscaling_resize_w]", "64")
    page.fill(f"{form} [name=upscaling_resize_h]", "64")
    page.fill(f"{form} [name=extras_upscaler_2_visibility]", "0")
    page.click("#extras-run")
    expect(page.locator("#extras-result figure img")).to_have_js_property("naturalHeight", 64, timeout=TIMEOUT)
    assert _result(page).size == (64, 64)

    # Bad input is named on the form (the server's 422), the field outlined
    page.check(f"{form} [name=resize_mode][value='0']")
    page.fill(f"{form} [name=upscaling_resize]", "50")
    open_page.allow(page, 422)
    page.click("#extras-run")
    expect(page.locator("#extras-error")).to_contain_text("upscaling_resize")
    expect(page.locator(f"{form} [name=upscaling_resize]")).to_have_class("invalid")

    # The result goes on to img2img, as A1111's "Send to img2img"
    page.locator("#extras-result button", has_text="Send to img2img").click()
    expect(page.locator("#tab-generate")).to_be_visible()
    expect(page.locator("#gen-init")).to_be_visible()
