"""Inpainting as A1111 does it: "only masked" with padding, mask rounding off, resize mode 3.

References are built here from public pieces: "only masked" is the crop of the init image,
inpainted as a whole picture and pasted back; A1111's crop maths is checked on its own examples.
"""

import numpy as np
import pytest
from PIL import Image, ImageDraw

from lorastudio.core.errors import InvalidParameter
from lorastudio.generation.img2img_inputs import crop_region, expand_crop_region, prepare_inputs
from lorastudio.core.params import Img2ImgOptions
from lorastudio.testing.pixels import assert_same_picture

P = dict(prompt="a red cat", width=32, height=32, steps=2, sampler="Euler", cfg_scale=5.0, seed=11,
         denoising_strength=0.9)


def arr(img):
    return np.asarray(img.convert("RGB"), dtype=np.float64)


def gradient(w, h):
    y, x = np.indices((h, w))
    return Image.fromarray(np.stack([x * 4 % 256, y * 4 % 256, (x + y) * 2 % 256], -1).astype(np.uint8))


def square_mask(size, box):
    m = Image.new("L", size, 0)
    ImageDraw.Draw(m).rectangle(box, fill=255)
    return m


def test_crop_region_maths_is_a1111s():
    mask = square_mask((512, 512), (300, 100, 427, 131))  # a 128x32 stroke
    assert crop_region(mask, 0) == (300, 100, 428, 132)
    assert crop_region(mask, 8) == (292, 92, 436, 140)
    assert crop_region(Image.new("L", (64, 64), 0), 32) is None  # blank: nothing to crop
    # A1111's docstring example: a 128x32 region processed at 512x512 grows to 128x128, centred.
    assert expand_crop_region((300, 100, 428, 132), 512, 512, 512, 512) == (300, 52, 428, 180)
    # pushed back inside the image at the edges
    assert expand_crop_region((0, 0, 128, 32), 512, 512, 512, 512) == (0, 0, 128, 128)
    assert expand_crop_region((400, 490, 512, 512), 256, 256, 512, 512) == (400, 400, 512, 512)


@pytest.mark.pixels
def test_only_masked_is_the_crop_inpainted_and_pasted_back(engine):
    init = gradient(64, 64)
    mask = square_mask((64, 64), (40, 8, 47, 15))
    # bbox (40, 8, 48, 16) + padding 12 -> (28, 0, 60, 28), grown to 1:1 -> (28, 0, 60, 32): 32x32,
    # the processing size, so the crop is not rescaled and the reference needs no resampling.
    only = engine.img2img(P, [init], mask, save=False, options=dict(
        inpaint_full_res=True, inpaint_full_res_padding=12, mask_blur=0, inpainting_fill=1)).images[0]
    crop = engine.img2img(P, [init.crop((28, 0, 60, 32))], mask.crop((28, 0, 60, 32)), save=False,
                          options=dict(mask_blur=0, inpainting_fill=1)).images[0]
    reference = init.copy()
    reference.paste(crop.image, (28, 0))
    assert only.image.size == (64, 64)
    assert_same_picture(only.image, reference)
    out = arr(only.image)
    assert np.abs(out[8:16, 40:48] - arr(init)[8:16, 40:48]).mean() > 10  # the mask was repainted
    assert "Inpaint area: Only masked, Masked area padding: 12" in only.infotext
    # read back (--from-png and the API's `infotext`): the same settings, the same call, the same pixels
    from lorastudio.core.infotext_params import img2img_options_from_infotext, params_from_infotext

    back = img2img_options_from_infotext(only.infotext)
    assert back == dict(inpaint_full_res=True, inpaint_full_res_padding=12, inpainting_fill=1,
                        inpainting_mask_invert=False)
    again = engine.img2img({**params_from_infotext(only.infotext), "model": None}, [init], mask, save=False,
                           options={**back, "mask_blur": 0}).images[0]
    assert np.array_equal(arr(again.image), out)
    # Blurred, the paste-back follows the blurred mask: untouched where it is 0 (10 px away).
    blurred = engine.img2img(P, [init], mask, save=False, options=dict(
        inpaint_full_res=True, inpaint_full_res_padding=4, mask_blur=4)).images[0]
    keep = np.ones((64, 64), bool)
    keep[0:16 + 10, 40 - 10:48 + 10] = False  # rows from 0: the mask starts 8 px from the top
    assert np.array_equal(arr(blurred.image)[keep], arr(init)[keep])
    assert "Mask blur: 4, Inpaint area: Only masked, Masked area padding: 4" in blurred.infotext
    # A blank mask leaves nothing to crop: plain img2img, as A1111 (same call, same pixels).
    blank = engine.img2img(P, [init.resize((32, 32))], Image.new("L", (32, 32), 0), save=False,
                           options=dict(inpaint_full_res=True)).images[0]
    plain = engine.img2img(P, [init.resize((32, 32))], save=False).images[0]
    assert np.array_equal(arr(blank.image), arr(plain.image)) and "Inpaint area" not in blank.infotext
    with pytest.raises(InvalidParameter) as e:
        engine.img2img(P, [init], mask.resize((32, 32)), save=False, options=dict(inpaint_full_res=True))
    assert e.value.field == "init_images.0"


def test_mask_round_off_keeps_a_soft_latent_mask(engine):
    mask = square_mask((32, 32), (0, 0, 13, 31))
    soft = prepare_inputs([gradient(32, 32)], mask, 32, 32, Img2ImgOptions(mask_round=False), 8)
    rounded = prepare_inputs([gradient(32, 32)], mask, 32, 32, Img2ImgOptions(), 8)
    # A1111: the blurred mask shrunk by PIL (bicubic) to latent size, /255; rounded only with mask_round.
    from lorastudio.generation.img2img_inputs import gaussian_blur_1d

    blurred = gaussian_blur_1d(gaussian_blur_1d(mask, 4, axis=1), 4, axis=0)
    expected = np.asarray(blurred.convert("RGB").resize((4, 4)), dtype=np.float32)[..., 0] / 255
    np.testing.assert_array_equal(soft.latent_mask, expected)
    np.testing.assert_array_equal(rounded.latent_mask, np.around(expected))
    assert 0 < expected[0, 1] < 1 and expected[0, 1] != np.around(expected[0, 1])  # a truly soft cell
    # The pipeline's nearest shrink of the block mask gives the soft mask back, to the 8-bit level.
    shrunk = np.asarray(soft.pipeline_mask.resize((4, 4), Image.Resampling.NEAREST), dtype=np.float32) / 255
    np.testing.assert_allclose(shrunk, expected, atol=0.5 / 255)
    a = engine.img2img(P, [gradient(32, 32)], mask, options=dict(mask_round=False), save=False).images[0]
    b = engine.img2img(P, [gradient(32, 32)], mask, save=False).images[0]
    assert np.abs(arr(a.image) - arr(b.image)).max() > 0  # the soft cells blend differently


def test_resize_mode_3_upscales_the_latents(engine):
    small = gradient(16, 16)
    inputs = prepare_inputs([small], None, 32, 32, Img2ImgOptions(resize_mode=3), 8)
    assert inputs.images[0].size == (16, 16)  # encoded at its own size
    at_size = gradient(32, 32)
    # At the output size, mode 3's interpolation is the identity: the same picture as mode 0.
    same = engine.img2img(P, [at_size], options=dict(resize_mode=3), save=False).images[0]
    zero = engine.img2img(P, [at_size], options=dict(resize_mode=0), save=False).images[0]
    assert_same_picture(same.image, zero.image)
    up = engine.img2img(P, [small], options=dict(resize_mode=3), save=False).images[0]
    assert up.image.size == (32, 32)
    with pytest.raises(InvalidParameter) as e:  # A1111 fails on the overlay there; we say why
        engine.img2img(P, [small], square_mask((16, 16), (0, 0, 7, 15)), options=dict(resize_mode=3), save=False)
    assert e.value.field == "resize_mode"
