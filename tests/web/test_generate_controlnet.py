"""The Generate page's ControlNet unit, hires fix and fast mode, in Chromium against a real server.

Its own server: the models folder holds a base whose VAE shrinks 8x (as SD's, which a ControlNet's
conditioning embedding expects) and a ControlNet for it, as A1111 single files.
"""

from __future__ import annotations

import base64
import io
import json

import pytest
from playwright.sync_api import expect

TIMEOUT = 120_000


@pytest.fixture(scope="module")
def server(tmp_path_factory, helpers):
    from lorastudio.testing.tiny_controlnet import write_controlnet_models_root

    root = tmp_path_factory.mktemp("webui-cn") / "models"
    write_controlnet_models_root(root, "control_tiny_canny")
    srv = helpers.Server(root, tmp_path_factory.mktemp("webui-cn-server"))
    try:
        srv.wait_up()
        yield srv
    finally:
        srv.stop()


def _posted(request) -> dict:
    return json.loads(request.post_data)


def test_controlnet_unit_preview_and_generation(open_page, helpers, tmp_path, shots):
    from PIL import Image

    page = open_page()
    page.fill("#gen-form [name=prompt]", "a cat")
    for name, value in (("width", "64"), ("height", "64"), ("steps", "2"), ("seed", "7")):
        page.fill(f"#gen-form [name={name}]", value)
    page.click("#gen-controlnet summary")
    # The extension's lists: the model with its hash, the preprocessors (weight-free ones among them).
    models = page.locator("#gen-form [name=cn_model] option")
    expect(models.first).to_have_text("None")  # the reference units' model, first as in the extension
    expect(models.nth(1)).to_have_text(__import__("re").compile(r"^control_tiny_canny \[[0-9a-f]{8}\]$"))
    expect(page.locator("#gen-form [name=cn_model]")).to_have_value(models.nth(1).get_attribute("value"))
    # a reference module needs no model: choosing one selects None, and another module the file again
    page.select_option("#gen-form [name=cn_module]", "reference_only")
    expect(page.locator("#gen-form [name=cn_model]")).to_have_value("None")
    assert "canny" in page.locator("#gen-form [name=cn_module] option").all_inner_texts()

    control = tmp_path / "pose.png"
    control.write_bytes(helpers.png(size=(64, 64), color=(20, 20, 20), pattern=240))
    page.set_input_files("#gen-form [name=cn_file]", str(control))
    page.select_option("#gen-form [name=cn_module]", "canny")
    page.click("#cn-detect")
    expect(page.locator("#cn-map")).to_be_visible(timeout=TIMEOUT)
    expect(page.locator("#cn-map")).to_have_js_property("naturalWidth", 64)
    # The map is Canny's edges of the circle: white lines on black, as the extension shows them.
    data = page.locator("#cn-map").get_attribute("src").split(",", 1)[1]
    with Image.open(io.BytesIO(base64.b64decode(data))) as im:
        levels = sorted(set(im.convert("L").getdata()))
    assert levels[0] == 0 and levels[-1] == 255

    page.check("#gen-form [name=cn_enabled]")
    page.fill("#gen-form [name=cn_weight]", "0.8")
    page.check("#gen-form [name=fast]")
    with page.expect_request(lambda r: r.url.endswith("/sdapi/v1/txt2img")) as sent:
        page.click("#gen-run")
    body = _posted(sent.value)
    unit = body["alwayson_scripts"]["controlnet"]["args"][0]
    assert unit["module"] == "canny" and unit["weight"] == 0.8 and unit["model"].startswith("control_tiny_canny")
    assert body["override_settings"]["lorastudio_fast"] is True
    result = page.locator("#gen-gallery figure.result").first
    expect(result.locator("img")).to_have_js_property("naturalWidth", 64, timeout=TIMEOUT)
    infotext = result.locator("pre.infotext")
    expect(infotext).to_contain_text('ControlNet 0: "Module: canny, Model: control_tiny_canny')
    expect(infotext).to_contain_text("Weight: 0.8")
    page.screenshot(path=str(shots / "generate-controlnet-en.png"), full_page=True)


def test_hires_fix_from_the_page(open_page):
    page = open_page()
    page.fill("#gen-form [name=prompt]", "a dog")
    for name, value in (("width", "64"), ("height", "64"), ("steps", "2")):
        page.fill(f"#gen-form [name={name}]", value)
    page.click("#gen-hires summary")
    options = page.locator("#gen-form [name=hr_upscaler] option").all_inner_texts()
    assert options[0] == "Latent" and {"Latent (nearest)", "Lanczos", "None"} <= set(options)
    page.check("#gen-form [name=enable_hr]")
    page.select_option("#gen-form [name=hr_upscaler]", "Lanczos")
    page.fill("#gen-form [name=hr_scale]", "1.5")
    page.fill("#gen-form [name=hr_second_pass_steps]", "1")
    page.click("#gen-run")
    result = page.locator("#gen-gallery figure.result").first
    expect(result.locator("img")).to_have_js_property("naturalWidth", 96, timeout=TIMEOUT)
    infotext = result.locator("pre.infotext")
    expect(infotext).to_contain_text("Hires upscaler: Lanczos")
    expect(infotext).to_contain_text("Hires upscale: 1.5")
    # Hires fix is a txt2img option: the section hides in img2img.
    page.click("[data-mode=img2img]")
    expect(page.locator("#gen-hires")).to_be_hidden()
