"""SD 1.x inpainting checkpoints (9-channel UNet input): detected, conditioned as A1111 conditions
them in img2img inpainting and in txt2img, checked against diffusers' StableDiffusionInpaintPipeline
on the same tiny weights."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from lorastudio.core.params import Img2ImgOptions, validate_params
from lorastudio.core.samplers import resolve_sampler
from lorastudio.models.families.base import LoadOptions

PARAMS = dict(prompt="a red circle", negative_prompt="", width=32, height=32, steps=3, sampler="Euler",
              cfg_scale=5.0, seed=11)
# Both sides run the same modules on the same noise; what differs is only that diffusers samples the
# (made nearly deterministic, std ~3e-7) VAE posterior for the masked image where we take its mean,
# and float rounding of the two code paths. One 8-bit level covers that; a wrong channel order,
# mask or masked image moves pixels by tens of levels.
TOLERANCE = 1


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def inpainting_model(tmp_path_factory):
    from lorastudio.models.loader import load_model
    from lorastudio.testing.tiny_sd import save_sd1_single_file, tiny_sd1_inpainting_pipeline

    folder = tmp_path_factory.mktemp("inpaint")
    path = save_sd1_single_file(tiny_sd1_inpainting_pipeline(0), folder / "tiny-inpainting.safetensors")
    return load_model(path, LoadOptions(cache_dir=folder / "cache"))


@pytest.fixture(scope="module")
def picture():
    im = Image.new("RGB", (32, 32), (40, 90, 200))
    ImageDraw.Draw(im).ellipse((4, 6, 27, 29), fill=(230, 200, 20))
    return im


@pytest.fixture(scope="module")
def mask():
    # on the latent grid (the tiny VAE shrinks by 2), no blur: A1111's and diffusers' mask handling agree exactly there
    m = Image.new("L", (32, 32), 0)
    ImageDraw.Draw(m).rectangle((8, 8, 23, 23), fill=255)
    return m


def _reference(model, params, image, mask_image, latents=None):
    """diffusers' own inpainting pipeline on the same modules, prompt embeddings and scheduler."""
    from diffusers import StableDiffusionInpaintPipeline

    family, p = model.family, validate_params(params)
    ref = StableDiffusionInpaintPipeline.from_pipe(model.pipe)
    ref.set_progress_bar_config(disable=True)
    ref.scheduler = family.make_scheduler(model.base_scheduler_config, resolve_sampler(p.sampler, p.scheduler))
    with torch.no_grad():
        cond = family.encode_prompts(ref, p.prompt, p.negative_prompt, clip_skip=1, cfg_scale=p.cfg_scale,
                                     guidance=p.guidance)
        out = ref(**cond.kwargs, image=image, mask_image=mask_image, strength=1.0, num_inference_steps=p.steps,
                  height=p.height, width=p.width, generator=torch.Generator().manual_seed(p.seed), latents=latents,
                  output_type="pil")
    return np.asarray(out.images[0], dtype=np.int16)


def test_nine_channel_unet_is_detected(inpainting_model):
    from lorastudio.testing.tiny_sd import tiny_sd1_pipeline

    assert inpainting_model.pipe.unet.config.in_channels == 9
    assert inpainting_model.family.is_inpainting_model(inpainting_model.pipe)
    assert not inpainting_model.family.is_inpainting_model(tiny_sd1_pipeline(0))
    # the noise has the VAE's 4 channels, not the UNet's 9
    f = inpainting_model.pipe.vae_scale_factor
    assert inpainting_model.family.latent_shape(inpainting_model.pipe, 32, 32) == (4, 32 // f, 32 // f)


def test_img2img_inpainting_matches_diffusers_inpaint_pipeline(inpainting_model, picture, mask):
    from lorastudio.generation.img2img import run_img2img

    params = validate_params({**PARAMS, "denoising_strength": 1.0})
    result = run_img2img(inpainting_model, params, [picture], mask=mask,
                         options=Img2ImgOptions(mask_blur_x=0, mask_blur_y=0, inpainting_fill=1),
                         activate_loras=lambda tags: [], model_hash=None, save_to=None)
    ours = np.asarray(result.images[0].image, dtype=np.int16)
    ref = _reference(inpainting_model, {**PARAMS}, picture, mask)
    inside = np.asarray(mask) > 127
    diff = np.abs(ours - ref)[inside]
    assert diff.max() <= TOLERANCE, f"max {diff.max()} levels inside the mask"
    # outside the mask A1111 pastes the original back
    assert np.array_equal(ours[~inside], np.asarray(picture, dtype=np.int16)[~inside])
    # and the conditioning matters: the same call with the masked image swapped for the full picture differs
    whole = _reference(inpainting_model, {**PARAMS}, picture, Image.new("L", (32, 32), 0))
    assert np.abs(whole - ref)[inside].max() > 10 * TOLERANCE


def test_txt2img_with_an_inpainting_model_uses_a1111s_empty_conditioning(inpainting_model):
    from lorastudio.generation.noise import initial_noise
    from lorastudio.generation.txt2img import run_txt2img

    result = run_txt2img(inpainting_model, validate_params(PARAMS), activate_loras=lambda tags: [],
                         model_hash=None, save_to=None)
    ours = np.asarray(result.images[0].image, dtype=np.int16)
    # A1111 txt2img on an inpainting model: mask of ones, masked image = grey. In diffusers' terms: an
    # all-white mask over any picture, started from the same noise.
    noise, _ = initial_noise([PARAMS["seed"]], inpainting_model.family.latent_shape(inpainting_model.pipe, 32, 32))
    ref = _reference(inpainting_model, PARAMS, Image.new("RGB", (32, 32), (90, 10, 200)),
                     Image.new("L", (32, 32), 255), latents=noise)
    # The whole picture is generated here (nothing pasted back), and the random tiny UNet at cfg 5 turns
    # the ~3e-7 posterior difference into up to 2 levels at a few pixels (measured: max 2, mean < 0.3).
    diff = np.abs(ours - ref)
    assert diff.max() <= 2 * TOLERANCE and diff.mean() < 0.3, (diff.max(), diff.mean())
    # without the conditioning channels the UNet could not even run; with the wrong ones it draws otherwise
    wrong = _reference(inpainting_model, PARAMS, Image.new("RGB", (32, 32), (90, 10, 200)),
                       Image.new("L", (32, 32), 0), latents=noise)
    assert np.abs(wrong - ref).max() > 10 * TOLERANCE


def test_sdxl_inpainting_checkpoint_is_used_as_a1111_uses_it(tmp_path, picture, mask):
    """An SDXL 9-channel checkpoint: detected, inpainting against diffusers' SDXL inpaint pipeline on
    the same modules, and txt2img runs on it (A1111's mask of ones and grey masked image)."""
    from diffusers import StableDiffusionXLInpaintPipeline

    from lorastudio.generation.img2img import run_img2img
    from lorastudio.generation.txt2img import run_txt2img
    from lorastudio.models.loader import load_model
    from lorastudio.testing.tiny_sd import save_sdxl_single_file, tiny_sdxl_inpainting_pipeline

    path = save_sdxl_single_file(tiny_sdxl_inpainting_pipeline(0), tmp_path / "tiny-xl-inpainting.safetensors")
    model = load_model(path, LoadOptions(cache_dir=tmp_path / "cache"))
    assert model.family.name == "sdxl" and model.family.is_inpainting_model(model.pipe)
    params = validate_params({**PARAMS, "denoising_strength": 1.0})
    ours = np.asarray(run_img2img(model, params, [picture], mask=mask,
                                  options=Img2ImgOptions(mask_blur_x=0, mask_blur_y=0, inpainting_fill=1),
                                  activate_loras=lambda tags: [], model_hash=None, save_to=None).images[0].image,
                      dtype=np.int16)
    ref_pipe = StableDiffusionXLInpaintPipeline.from_pipe(model.pipe)
    ref_pipe.set_progress_bar_config(disable=True)
    ref_pipe.scheduler = model.family.make_scheduler(model.base_scheduler_config, resolve_sampler("Euler"))
    with torch.no_grad():
        cond = model.family.encode_prompts(ref_pipe, params.prompt, "", clip_skip=1, cfg_scale=params.cfg_scale,
                                           guidance=params.guidance)
        ref = ref_pipe(**cond.kwargs, image=picture, mask_image=mask, strength=1.0, num_inference_steps=params.steps,
                       height=32, width=32, generator=torch.Generator().manual_seed(params.seed), output_type="pil")
    ref = np.asarray(ref.images[0], dtype=np.int16)
    inside = np.asarray(mask) > 127
    assert np.abs(ours - ref)[inside].max() <= TOLERANCE
    assert np.array_equal(ours[~inside], np.asarray(picture, dtype=np.int16)[~inside])
    drawn = run_txt2img(model, validate_params(PARAMS), activate_loras=lambda tags: [], model_hash=None,
                        save_to=None).images[0].image
    assert drawn.size == (32, 32)
