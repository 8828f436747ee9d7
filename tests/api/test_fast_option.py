"""The fast mode through the A1111 API: option `lorastudio_fast` (GenerationParams.fast), per
request in override_settings or for every request through /sdapi/v1/options."""

import base64
import io

import numpy as np
import pytest
from PIL import Image

REQ = {"prompt": "a red cat", "negative_prompt": "blurry", "steps": 2, "width": 32, "height": 32, "seed": 7,
       "sampler_name": "Euler", "cfg_scale": 5}


def _pixels(r) -> np.ndarray:
    assert r.status_code == 200, r.text
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))).convert("RGB")).astype(int)


@pytest.mark.pixels
def test_lorastudio_fast_option_reaches_the_engine(client, engine):
    exact = _pixels(client.post("/sdapi/v1/txt2img", json=REQ))
    calls = engine.fast_mode().calls
    fast = _pixels(client.post("/sdapi/v1/txt2img", json={**REQ, "override_settings": {"lorastudio_fast": True}}))
    assert engine.fast_mode().calls == calls + 1
    assert np.abs(fast - exact).mean() <= 2.0  # the fast mode's tolerance (tests/generation/test_fast_mode.py)
    assert client.get("/sdapi/v1/options").json()["lorastudio_fast"] is False  # per request only
    assert np.array_equal(_pixels(client.post("/sdapi/v1/txt2img", json=REQ)), exact)
    assert client.post("/sdapi/v1/options", json={"lorastudio_fast": True}).status_code == 200
    _pixels(client.post("/sdapi/v1/txt2img", json=REQ))
    assert engine.fast_mode().calls == calls + 2
    r = client.post("/sdapi/v1/txt2img", json={**REQ, "override_settings": {"lorastudio_fast": "yes"}})
    assert r.status_code == 422 and "lorastudio_fast" in r.text
