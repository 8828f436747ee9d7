"""The HTTP API keeps A1111's size defaults (clients send sizes); its OpenAPI text says so."""

from __future__ import annotations

import base64
import io


def test_txt2img_without_a_width_draws_a1111s_512_whatever_the_native_size(client, engine):
    from PIL import Image

    model = engine.load("tiny")
    assert model.family.native_resolution(model.pipe) != 512  # the tiny checkpoint's own size differs
    # Height given, width left out: a 512x64 picture keeps the test cheap and still shows the default.
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "a red circle", "steps": 1, "seed": 1, "height": 64})
    assert r.status_code == 200, r.text
    assert Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))).size == (512, 64)


def test_openapi_says_sizes_default_to_512_and_the_cli_uses_the_native_size(client):
    spec = client.get("/openapi.json").json()
    operation = spec["paths"]["/sdapi/v1/txt2img"]["post"]
    assert "width and height are 512 whatever the" in " ".join(operation["description"].split())
    fields = spec["components"]["schemas"]["Txt2ImgRequest"]["properties"]
    assert "512 when absent, as in A1111's API" in fields["width"]["description"]
    assert "the CLI uses the native size" in fields["height"]["description"]
