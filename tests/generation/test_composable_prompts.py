"""Composable prompts (AND, :weight) in generation: A1111's uncond + cfg * sum(w * (cond - uncond)).

References are other generations whose guidance is the same sum by construction, computed by
the plain (single-prompt) path: "red:0.5" at CFG 20 is "red" at CFG 10; "red AND red" (two texts
that tokenise alike) at CFG 5 is "red" at CFG 10; a second sub-prompt at weight 0 leaves the first.
The two sides differ in the order of float operations only (u + w * (c - u) is not bit-equal to
the plain guidance), hence assert_same_picture's 2 levels of 255.
"""

import numpy as np
import pytest

from lorastudio.core.errors import InvalidParameter
from lorastudio.testing.pixels import assert_same_picture

SMALL = dict(width=32, height=32, steps=2, sampler="Euler", seed=5)


def arr(img):
    return np.asarray(img.convert("RGB"), dtype=np.float64)


@pytest.mark.pixels
def test_weights_and_sums_match_the_plain_path(engine):
    def gen(prompt, cfg, **extra):
        return engine.txt2img({**SMALL, **extra, "prompt": prompt, "cfg_scale": cfg}, save=False).images[0]

    # CFG 10: on the tiny random model, "red" at CFG 10 and at 20 differ by about 20 levels, so a
    # weight that were ignored would show.
    red = gen("red", 10.0)
    assert_same_picture(gen("red:0.5", 20.0).image, red.image)
    assert_same_picture(gen("red AND red", 5.0).image, red.image)
    assert_same_picture(gen("red AND a photo of a dog:0", 10.0).image, red.image)
    both = gen("red AND a photo of a dog", 10.0)
    assert np.abs(arr(both.image) - arr(red.image)).max() > 10  # the second sub-prompt counts
    assert "red AND a photo of a dog" in both.infotext.splitlines()[0]  # the prompt is kept as written
    # img2img and the hires pass use the same guidance
    from PIL import Image

    init = Image.new("RGB", (32, 32), (20, 200, 90))
    a = engine.img2img({**SMALL, "prompt": "red:0.5", "cfg_scale": 20.0}, [init], save=False).images[0]
    b = engine.img2img({**SMALL, "prompt": "red", "cfg_scale": 10.0}, [init], save=False).images[0]
    assert_same_picture(a.image, b.image)
    hires = dict(enable_hr=True, hr_scale=1.5, denoising_strength=0.5)
    assert_same_picture(gen("red:0.5", 20.0, **hires).image, gen("red", 10.0, **hires).image)


def test_refusals_name_the_field(engine, family_engine):
    with pytest.raises(InvalidParameter) as e:
        engine.txt2img({**SMALL, "prompt": "red AND blue", "cfg_scale": 1.0}, save=False)
    assert e.value.field == "cfg_scale" and "CFG scale above 1" in str(e.value)
    flux = family_engine("tiny-flux-aio.safetensors")
    with pytest.raises(InvalidParameter) as e:
        flux.txt2img({**SMALL, "prompt": "red AND blue", "sampler": "Euler (flow)"}, save=False)
    assert e.value.field == "prompt" and "FLUX" in str(e.value)
    # a lone ":number" tail is text there, as before ("16:9" is not a weight without CFG)
    assert "16:9" in flux.txt2img({**SMALL, "prompt": "a cat, 16:9", "sampler": "Euler (flow)"},
                                  save=False).images[0].infotext


@pytest.mark.pixels
def test_sdxl_sub_prompts_carry_their_pooled_embeddings(family_engine):
    sdxl = family_engine("tiny-sdxl.safetensors")
    p = {**SMALL, "cfg_scale": 10.0}
    red = sdxl.txt2img({**p, "prompt": "red"}, save=False).images[0]
    # the second "red" runs through the extra UNet call, with its own pooled embedding
    assert_same_picture(sdxl.txt2img({**p, "prompt": "red AND red", "cfg_scale": 5.0}, save=False).images[0].image,
                        red.image)
