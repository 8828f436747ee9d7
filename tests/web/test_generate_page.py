"""Generate, PNG info and inpaint in Chromium against a real server with the tiny model."""

from __future__ import annotations

import base64
import io
import re

from playwright.sync_api import expect

TIMEOUT = 120_000


def _small_job(page, prompt: str) -> None:
    page.fill("#gen-form [name=prompt]", prompt)
    for name, value in (("width", "64"), ("height", "64"), ("steps", "2")):
        page.fill(f"#gen-form [name={name}]", value)


def test_txt2img_shows_the_image_and_infotext_and_the_download_keeps_parameters(open_page, shots, catalogs):
    from PIL import Image

    page = open_page()
    expect(page.locator("#tab-generate")).to_be_visible()
    # Prompt text with markup stays text everywhere it is shown back.
    _small_job(page, "a red square, <i>x</i>")
    page.fill("#gen-form [name=seed]", "4321")
    page.click("#gen-run")
    result = page.locator("#gen-gallery figure.result").first
    expect(result.locator("img")).to_have_js_property("naturalWidth", 64, timeout=TIMEOUT)
    infotext = result.locator("pre.infotext")
    expect(infotext).to_contain_text("a red square, <i>x</i>")
    expect(infotext).to_contain_text("Steps: 2")
    expect(infotext).to_contain_text("Seed: 4321")
    assert page.locator("#gen-gallery i").count() == 0
    page.screenshot(path=str(shots / "generate-result-en.png"), full_page=True)

    with page.expect_download() as info:
        result.locator("a[download]").click()
    data = open(info.value.path(), "rb").read()
    with Image.open(io.BytesIO(data)) as im:
        assert im.size == (64, 64)
        assert "a red square, <i>x</i>" in im.text["parameters"] and "Seed: 4321" in im.text["parameters"]

    # -1 and "reuse last seed"
    page.click("#seed-random")
    expect(page.locator("#gen-form [name=seed]")).to_have_value("-1")
    page.click("#seed-reuse")
    expect(page.locator("#gen-form [name=seed]")).to_have_value("4321")

    # The result's buttons follow a language switch (the image and its infotext stay as they are).
    ja = catalogs["ja"]
    page.select_option("#lang-select", "ja")
    expect(result.locator("a[download]")).to_have_text(ja["gen.download"])
    expect(result.locator("button").first).to_have_text(ja["gen.send_img2img"])
    expect(infotext).to_contain_text("Seed: 4321")
    page.select_option("#lang-select", "en")


def test_png_info_then_send_to_txt2img_fills_every_field(open_page, helpers, tmp_path):
    params = ("a blue cat, <lora:mystyle:0.5>\nNegative prompt: ugly, blurry\n"
              "Steps: 7, Sampler: Euler a, Schedule type: Karras, CFG scale: 5.5, Seed: 98765, Size: 64x72, "
              "Model: tiny, Clip skip: 2")
    png = tmp_path / "a1111.png"
    png.write_bytes(helpers.png((64, 72), (10, 20, 200), text={"parameters": params}))
    page = open_page()
    page.click("[data-tab=pnginfo]")
    page.set_input_files("#png-file", str(png))
    expect(page.locator("#png-info")).to_have_text(params)
    expect(page.locator("#png-params")).to_contain_text("Euler a")
    page.click("#png-send")
    form = page.locator("#gen-form")
    expect(page.locator("#tab-generate")).to_be_visible()
    expected = {"prompt": "a blue cat, <lora:mystyle:0.5>", "negative_prompt": "ugly, blurry", "steps": "7",
                "sampler_name": "Euler a", "scheduler": "Karras", "cfg_scale": "5.5", "seed": "98765",
                "width": "64", "height": "72", "clip_skip": "2"}
    for name, value in expected.items():
        expect(form.locator(f"[name={name}]")).to_have_value(value)
    # "Model: tiny" picks the checkpoint by its name, whatever hash its title shows.
    expect(form.locator("[name=sd_model_checkpoint]")).to_have_value(re.compile(r"^tiny\.safetensors"))


def test_inpaint_sends_the_mask_drawn_with_the_brush(open_page, helpers, tmp_path):
    from PIL import Image

    init = tmp_path / "init.png"
    init.write_bytes(helpers.png((64, 64), (30, 160, 60), pattern=100))
    page = open_page()
    page.click("[data-mode=inpaint]")
    page.set_input_files("#gen-form [name=init_file]", str(init))
    expect(page.locator("#gen-form [name=width]")).to_have_value("64")
    _small_job(page, "a red dot")
    canvas = page.locator("#mask-canvas")
    expect(canvas).to_be_visible()
    box = canvas.bounding_box()
    # A stroke across the upper-left quarter only.
    page.mouse.move(box["x"] + box["width"] * 0.1, box["y"] + box["height"] * 0.2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.4, box["y"] + box["height"] * 0.2, steps=8)
    page.mouse.up()
    with page.expect_request(lambda r: r.url.endswith("/sdapi/v1/img2img")) as req:
        page.click("#gen-run")
    body = req.value.post_data_json
    assert body["denoising_strength"] == 0.75 and len(body["init_images"]) == 1
    mask = Image.open(io.BytesIO(base64.b64decode(body["mask"]))).convert("L")
    assert mask.size == (64, 64)
    assert mask.getpixel((int(64 * 0.25), int(64 * 0.2))) == 255  # painted
    assert mask.getpixel((50, 55)) == 0  # untouched stays kept
    result = page.locator("#gen-gallery figure.result").first
    expect(result.locator("img")).to_have_js_property("naturalWidth", 64, timeout=TIMEOUT)
    expect(result.locator("pre.infotext")).to_contain_text("Denoising strength: 0.75")
    # "send to inpaint" puts the result back on the canvas
    result.get_by_role("button", name=re.compile("inpaint")).click()
    expect(page.locator("#mask-canvas")).to_be_visible()
