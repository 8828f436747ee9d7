"""A1111's variation seeds (modules/rng.py), against references written here in numpy."""

import numpy as np
import pytest
import torch

from lorastudio.core.errors import InvalidParameter
from lorastudio.core.infotext_params import params_from_infotext
from lorastudio.core.params import GenerationParams
from lorastudio.generation.variation_seeds import seeded_noise, slerp

SMALL = dict(prompt="a red circle", width=32, height=32, steps=3, sampler="Euler", cfg_scale=5.0, seed=3)


def arr(img):
    return np.asarray(img.convert("RGB"))


def np_slerp(t, a, b):
    # Spherical interpolation of each [:, :, w] column vector over axis 1 (A1111 normalises over dim 1).
    an, bn = a / np.linalg.norm(a, axis=1, keepdims=True), b / np.linalg.norm(b, axis=1, keepdims=True)
    cos = (an * bn).sum(1, keepdims=True)
    om = np.arccos(cos)
    return np.sin((1 - t) * om) / np.sin(om) * a + np.sin(t * om) / np.sin(om) * b


def test_slerp_matches_the_formula():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 6, 5, generator=g), torch.randn(4, 6, 5, generator=g)
    for t in (0.0, 0.3, 1.0):
        np.testing.assert_allclose(slerp(t, a, b).numpy(), np_slerp(t, a.double().numpy(), b.double().numpy()),
                                   rtol=1e-4, atol=1e-5)


def test_noise_is_the_slerp_of_the_two_seeds_noises():
    p = GenerationParams(**SMALL, subseed=9, subseed_strength=0.25)
    latents, _ = seeded_noise(p, [3], [9], (4, 8, 8))
    n3 = torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(3)).double().numpy()
    n9 = torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(9)).double().numpy()
    np.testing.assert_allclose(latents[0].numpy(), np_slerp(0.25, n3, n9), rtol=1e-4, atol=1e-5)


def test_seed_resize_pastes_the_smaller_seeds_noise_in_the_centre():
    p = GenerationParams(**SMALL, seed_resize_from_w=16, seed_resize_from_h=32)
    latents, _ = seeded_noise(p, [3], [0], (4, 8, 8))  # 8 px per cell: 2x4 cells pasted into 8x8
    # A1111: the small noise from a fresh draw of the seed, the full-size noise from the image's own
    # generator (its first draw, so the sampler's later draws follow it as without the resize).
    small = torch.randn(4, 4, 2, generator=torch.Generator().manual_seed(3))
    big = torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(latents[0][:, 2:6, 3:5], small)
    outside = torch.ones(8, 8, dtype=torch.bool)
    outside[2:6, 3:5] = False
    assert torch.equal(latents[0][:, outside], big[:, outside])


@pytest.mark.pixels
def test_strength_0_is_the_seed_and_1_is_the_variation_seed(engine):
    plain3 = engine.txt2img(SMALL, save=False).images[0]
    plain9 = engine.txt2img({**SMALL, "seed": 9}, save=False).images[0]
    zero = engine.txt2img({**SMALL, "subseed": 9, "subseed_strength": 0}, save=False).images[0]
    one = engine.txt2img({**SMALL, "subseed": 9, "subseed_strength": 1}, save=False).images[0]
    # Same noise, same calls: equal pixels.
    assert np.array_equal(arr(zero.image), arr(plain3.image)) and np.array_equal(arr(one.image), arr(plain9.image))
    assert "Variation" not in zero.infotext and "Variation seed: 9, Variation seed strength: 1," in one.infotext


def test_infotext_round_trip_and_batches_count_the_variation_seed_up(engine):
    r = engine.txt2img({**SMALL, "subseed": 20, "subseed_strength": 0.4, "batch_size": 2}, save=False)
    first, second = r.images
    assert "Seed: 3, Size: 32x32" in first.infotext
    assert "Variation seed: 20, Variation seed strength: 0.4" in first.infotext
    assert "Seed: 4," in second.infotext and "Variation seed: 21," in second.infotext
    back = params_from_infotext(second.infotext)
    assert (back["seed"], back["subseed"], back["subseed_strength"]) == (4, 21, 0.4)
    again = engine.txt2img({**back, "model": None}, save=False).images[0]
    # A batch of two against a batch of one: kernels round differently (lorastudio.testing.pixels).
    from lorastudio.testing.pixels import assert_same_picture

    assert_same_picture(again.image, second.image)


def test_seed_resize_from_is_written_and_read(engine):
    r = engine.txt2img({**SMALL, "seed_resize_from_w": 16, "seed_resize_from_h": 24}, save=False).images[0]
    assert "Seed resize from: 16x24" in r.infotext
    back = params_from_infotext(r.infotext)
    assert (back["seed_resize_from_w"], back["seed_resize_from_h"]) == (16, 24)


@pytest.mark.pixels
def test_img2img_inpainting_and_the_hires_pass_take_the_variation_noise(engine):
    """Variation strength 1 is the variation seed's noise: seed 3 with variation seed 9 at strength 1
    must draw what plain seed 9 draws, in img2img (scheduler noise swapped), in inpainting at
    denoising 1 (the pipeline starts from the noise alone) and in both hires passes. Euler draws no
    further noise, so only the start noise differs between the two seeds."""
    from PIL import Image, ImageDraw

    from lorastudio.testing.pixels import assert_same_picture

    init = Image.new("RGB", (32, 32), (200, 40, 90))
    mask = Image.new("L", (32, 32), 0)
    ImageDraw.Draw(mask).rectangle((0, 0, 15, 31), fill=255)
    cases = [
        (dict(denoising_strength=0.6), None, engine.img2img),
        (dict(denoising_strength=1.0), mask, engine.img2img),
        (dict(enable_hr=True, hr_scale=1.5, hr_upscaler="Latent", denoising_strength=0.6), "txt2img", None),
    ]
    for extra, how, _ in cases:
        p = {**SMALL, **extra}
        if how == "txt2img":
            varied = engine.txt2img({**p, "subseed": 9, "subseed_strength": 1}, save=False).images[0]
            plain = engine.txt2img({**p, "seed": 9}, save=False).images[0]
        else:
            varied = engine.img2img({**p, "subseed": 9, "subseed_strength": 1}, [init], how, save=False).images[0]
            plain = engine.img2img({**p, "seed": 9}, [init], how, save=False).images[0]
            if how is None:  # the two seeds give different pictures, so the comparisons below can fail
                other = engine.img2img(p, [init], how, save=False).images[0]
                assert np.abs(arr(other.image).astype(float) - arr(plain.image)).max() > 10
        # slerp(1, a, b) is b up to float rounding (sin(omega) / sin(omega)): a level at most.
        assert_same_picture(varied.image, plain.image)
        assert "Variation seed: 9, Variation seed strength: 1" in varied.infotext
        back = params_from_infotext(varied.infotext)
        assert (back["subseed"], back["subseed_strength"]) == (9, 1.0)
