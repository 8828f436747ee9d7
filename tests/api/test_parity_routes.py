"""A1111 features the API used to refuse: hires fix and variation seeds, through /sdapi/v1/txt2img."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
from PIL import Image

SMALL = {"prompt": "a cat", "steps": 2, "width": 32, "height": 32, "seed": 7, "sampler_name": "Euler"}


def _image(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")


def test_enable_hr_runs_the_hires_fix_with_a1111s_infotext(client):
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, "enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Lanczos",
                                               "denoising_strength": 0.5, "hr_second_pass_steps": 2,
                                               "hr_sampler_name": "Use same sampler", "hr_scheduler": "Use same scheduler"})
    assert r.status_code == 200, r.text
    assert _image(r.json()["images"][0]).size == (48, 48)
    info = json.loads(r.json()["info"])
    text = info["infotexts"][0]
    assert "Size: 32x32" in text and "Denoising strength: 0.5" in text
    assert "Hires upscale: 1.5, Hires steps: 2, Hires upscaler: Lanczos" in text, text
    assert info["denoising_strength"] == 0.5
    # The infotext alone reproduces the picture (A1111 1.8+: `infotext` fills in the request).
    again = client.post("/sdapi/v1/txt2img", json={"infotext": text, "sampler_name": "Euler"})
    assert again.status_code == 200, again.text
    assert np.array_equal(np.asarray(_image(again.json()["images"][0])), np.asarray(_image(r.json()["images"][0])))


def test_variation_seed_strength_0_and_1(client):
    def pixels(**extra):
        r = client.post("/sdapi/v1/txt2img", json={**SMALL, **extra})
        assert r.status_code == 200, r.text
        return np.asarray(_image(r.json()["images"][0])), json.loads(r.json()["info"])

    plain7, _ = pixels()
    plain9, _ = pixels(seed=9)
    zero, _ = pixels(subseed=9, subseed_strength=0)
    one, info = pixels(subseed=9, subseed_strength=1)
    half, half_info = pixels(subseed=9, subseed_strength=0.5)
    assert np.array_equal(zero, plain7) and np.array_equal(one, plain9)
    assert not np.array_equal(half, plain7) and not np.array_equal(half, plain9)
    assert (half_info["subseed"], half_info["subseed_strength"]) == (9, 0.5)
    assert "Variation seed: 9, Variation seed strength: 0.5" in half_info["infotexts"][0]


def test_styles_field_and_prompt_styles_route(client, engine, tmp_path):
    path = tmp_path / "styles.csv"
    path.write_text('name,prompt,negative_prompt\nCine,"film still of {prompt}",cartoon\n', encoding="utf-8")
    saved = engine.settings
    engine.settings = saved.model_copy(update={"styles_file": path})
    try:
        assert client.get("/sdapi/v1/prompt-styles").json() == [
            {"name": "Cine", "prompt": "film still of {prompt}", "negative_prompt": "cartoon"}]
        styled = client.post("/sdapi/v1/txt2img", json={**SMALL, "styles": ["Cine"]})
        assert styled.status_code == 200, styled.text
        info = json.loads(styled.json()["info"])
        assert info["styles"] == ["Cine"]
        assert info["infotexts"][0].startswith("film still of a cat\nNegative prompt: cartoon\n")
        plain = client.post("/sdapi/v1/txt2img", json={**SMALL, "prompt": "film still of a cat",
                                                       "negative_prompt": "cartoon"})
        assert np.array_equal(np.asarray(_image(styled.json()["images"][0])),
                              np.asarray(_image(plain.json()["images"][0])))
        bad = client.post("/sdapi/v1/txt2img", json={**SMALL, "styles": ["Nope"]})
        assert bad.status_code == 422 and "Nope" in bad.text
    finally:
        engine.settings = saved


def test_dynamic_prompts_always_on_script(client):
    from dynamicprompts.generators import RandomPromptGenerator

    template = "a {red|green|blue} cat"
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, "prompt": template, "batch_size": 2,
                                               "alwayson_scripts": {"Dynamic Prompts v2.17.1": {"args": [True, False]}}})
    assert r.status_code == 200, r.text
    texts = json.loads(r.json()["info"])["infotexts"]
    want = RandomPromptGenerator(seed=7).generate(template, 2, seeds=[7, 8])
    assert [t.split("\n")[0] for t in texts] == want
    assert all(f"Template: {template}" in t for t in texts)
    bad = client.post("/sdapi/v1/txt2img", json={**SMALL, "alwayson_scripts": {
        "Dynamic Prompts v2.17.1": {"args": [True, False, 1, True]}}})
    assert bad.status_code == 422 and "is_magic_prompt" in bad.text
