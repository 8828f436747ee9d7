"""A1111's hires fix: first pass, upscale, img2img second pass, and its infotext.

References, not computed by the code under test:
- image upscalers: our plain txt2img, a PIL Lanczos resize written here, then our plain img2img
  with the schedule A1111 uses (int(steps / strength) steps, `steps` of them run);
- latent upscalers: plain diffusers (txt2img to latents, torch interpolate, the img2img pipeline)
  with a scheduler built here;
- sizes and infotext strings: A1111 v1.10 `calculate_target_resolution` and `create_infotext`,
  worked out by hand below.
"""

import numpy as np
import pytest
import torch
from PIL import Image

from lorastudio.core.errors import InvalidParameter
from lorastudio.core.infotext import parse_infotext
from lorastudio.core.infotext_params import params_from_infotext
from lorastudio.testing.pixels import assert_same_picture

# 4 steps at strength 0.6: A1111 runs 4 steps of an int(4 / 0.6) = 6-step schedule.
BASE = dict(prompt="a red circle", width=32, height=32, steps=4, sampler="Euler", cfg_scale=5.0, seed=11,
            denoising_strength=0.6)


def arr(img):
    return np.asarray(img.convert("RGB"))


@pytest.mark.pixels
def test_lanczos_hires_is_txt2img_then_img2img_of_the_resized_picture(engine):
    hires = engine.txt2img({**BASE, "enable_hr": True, "hr_upscaler": "Lanczos", "hr_scale": 2}, save=False)
    first = engine.txt2img(BASE, save=False).images[0].image
    big = first.resize((64, 64), resample=Image.Resampling.LANCZOS)
    # img2img runs int(0.6 * 6) + 1 = 4 steps of 6: the same tail of the same schedule.
    ref = engine.img2img({**BASE, "steps": 6, "width": 64, "height": 64}, [big], save=False).images[0].image
    assert hires.images[0].image.size == (64, 64)
    # Same calls on same shapes: the product promises equal pixels here.
    assert np.array_equal(arr(hires.images[0].image), arr(ref))


@pytest.mark.pixels
def test_latent_hires_matches_plain_diffusers_two_passes(engine):
    from diffusers import EulerDiscreteScheduler, StableDiffusionImg2ImgPipeline

    ours = engine.txt2img({**BASE, "enable_hr": True, "hr_upscaler": "Latent (bicubic antialiased)",
                           "hr_scale": 1.5}, save=False).images[0].image
    pipe = engine.model.pipe

    def euler():  # A1111's Euler: k-diffusion levels over t = 999..0 on the SD 1.x betas
        return EulerDiscreteScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                      beta_schedule="scaled_linear")

    pipe.scheduler = euler()
    latents = pipe("a red circle", width=32, height=32, num_inference_steps=4, guidance_scale=5.0,
                   generator=torch.Generator().manual_seed(11), output_type="latent").images
    # The tiny VAE has 2 pixels per latent cell (SD's has 8): 48 px are 24 cells.
    assert pipe.vae_scale_factor == 2
    up = torch.nn.functional.interpolate(latents, size=(24, 24), mode="bicubic", antialias=True)
    i2i = StableDiffusionImg2ImgPipeline.from_pipe(pipe)
    i2i.scheduler = euler()
    ref = i2i("a red circle", image=up, strength=4 / 6, num_inference_steps=6, guidance_scale=5.0,
              generator=torch.Generator().manual_seed(11)).images[0]
    assert ours.size == ref.size == (48, 48)
    assert arr(ref).std() > 1
    # Two computations of one thing (our chunked prompt encoding vs diffusers'): the project tolerance.
    assert_same_picture(ref, ours)


def test_infotext_is_a1111s_and_reads_back(engine):
    p = {**BASE, "enable_hr": True, "hr_upscaler": "Latent (nearest-exact)", "hr_resize_x": 48, "hr_resize_y": 40,
         "hr_second_pass_steps": 3, "hr_sampler_name": "DPM++ 2M", "hr_prompt": "a blue circle", "hr_cfg": 4.0}
    r = engine.txt2img(p, save=False)
    info = r.images[0].infotext
    # 32x32 covering 48x40: 48x48, cropped by (48-40) // 2 = 4 latent rows of 2 px (tiny VAE) -> 48x40.
    assert r.images[0].image.size == (48, 40)
    assert ("Size: 32x32" in info and "Denoising strength: 0.6, Hires sampler: DPM++ 2M, "
            "Hires prompt: a blue circle, Hires resize: 48x40, Hires steps: 3, "
            "Hires upscaler: Latent (nearest-exact), Hires CFG Scale: 4," in info), info
    back = params_from_infotext(info)
    for key in ("enable_hr", "hr_upscaler", "hr_resize_x", "hr_resize_y", "hr_second_pass_steps", "hr_sampler_name",
                "hr_prompt", "hr_cfg", "denoising_strength", "seed", "steps", "width", "height"):
        assert back[key] == p[key], key
    again = engine.txt2img({**back, "model": None}, save=False)
    assert np.array_equal(arr(again.images[0].image), arr(r.images[0].image))


def test_plain_txt2img_writes_no_hires_keys_and_reads_back_without_hires(engine):
    info = engine.txt2img(BASE, save=False).images[0].infotext
    assert "Hires" not in info and "Denoising strength" not in info
    assert "enable_hr" not in params_from_infotext(info)


def test_a1111_infotext_with_hires_upscale(engine):
    text = ("a cat\nSteps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 1, Size: 512x512, "
            "Denoising strength: 0.7, Hires upscale: 2, Hires steps: 10, Hires upscaler: Latent, Version: v1.10.1")
    back = params_from_infotext(text)
    assert (back["enable_hr"], back["hr_scale"], back["hr_second_pass_steps"], back["hr_upscaler"],
            back["denoising_strength"]) == (True, 2.0, 10, "Latent", 0.7)
    assert "hr_sampler_name" not in back and "hr_resize_x" not in back


@pytest.mark.parametrize("scale,resize,want", [
    (1.5, (0, 0), (48, 48)),   # int(32 * 1.5)
    (2.0, (64, 0), (64, 64)),  # y from the aspect ratio
    (2.0, (0, 40), (40, 40)),
    (2.0, (64, 40), (64, 40)),  # cover 64x64, crop 12 latent rows of 2 px (tiny VAE)
])
def test_target_sizes_as_a1111(engine, scale, resize, want):
    r = engine.txt2img({**BASE, "steps": 1, "enable_hr": True, "hr_scale": scale, "hr_resize_x": resize[0],
                        "hr_resize_y": resize[1], "hr_upscaler": "Nearest"}, save=False)
    assert r.images[0].image.size == want
    assert ("Hires resize" in r.images[0].infotext) == (resize != (0, 0))


@pytest.mark.parametrize("bad,field", [
    ({"hr_upscaler": "R-ESRGAN 4x+"}, "hr_upscaler"),
    ({"denoising_strength": 0.0}, "denoising_strength"),
    ({"hr_sampler_name": "Eulr"}, "sampler"),
])
def test_bad_hires_settings_name_the_field(engine, bad, field):
    with pytest.raises(InvalidParameter) as e:
        engine.txt2img({**BASE, "enable_hr": True, **bad}, save=False)
    assert e.value.field == field


def test_upscaler_registry_takes_extra_image_upscalers():
    from lorastudio.generation.hires_fix import resolve_upscaler, upscale_image, upscaler_names

    def doubler(img, scale):
        return img.resize((img.width * 2, img.height * 2), resample=Image.Resampling.NEAREST)

    label, kind, fn = resolve_upscaler("my esrgan", {"My ESRGAN": doubler})
    assert (label, kind, fn) == ("My ESRGAN", "image", doubler)
    assert "My ESRGAN" in upscaler_names({"My ESRGAN": doubler}) and "Latent (antialiased)" in upscaler_names()
    # A1111: up to three upscaler passes until the (8-rounded) size is reached, then Lanczos to fit.
    small = Image.new("RGB", (10, 10), "red")
    assert upscale_image(small, 36, 36, doubler).size == (36, 36)
    assert parse_infotext("x\nSteps: 1, Hires upscaler: My ESRGAN, Size: 8x8")["Hires upscaler"] == "My ESRGAN"


def test_from_png_reads_the_hires_settings_back(engine, tmp_path):
    from lorastudio.interfaces.cli.app import _params_from_png

    p = {**BASE, "enable_hr": True, "hr_upscaler": "Nearest", "hr_scale": 1.5, "hr_second_pass_steps": 2}
    saved = engine.txt2img(p, outdir=tmp_path).images[0]
    back = _params_from_png(saved.path)  # what `lorastudio txt2img --from-png` starts from
    assert {k: back[k] for k in ("enable_hr", "hr_upscaler", "hr_scale", "hr_second_pass_steps")} == \
        {"enable_hr": True, "hr_upscaler": "Nearest", "hr_scale": 1.5, "hr_second_pass_steps": 2}
    again = engine.txt2img({**back, "model": None}, save=False).images[0]
    assert np.array_equal(arr(again.image), arr(saved.image))
