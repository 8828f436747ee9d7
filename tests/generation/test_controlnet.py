"""ControlNet units: files in the layouts users keep, our pictures vs diffusers' own ControlNet
pipelines on the same weights, the extension's semantics (weight, guidance range, control mode)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lorastudio.core.errors import InvalidParameter, ModelFileError
from lorastudio.testing.pixels import assert_same_picture, max_level_difference

SMALL = dict(width=64, height=64, steps=3, cfg_scale=5.0, sampler="Euler", scheduler="Automatic")


@pytest.fixture(scope="module")
def cn_setup(tmp_path_factory):
    from lorastudio.testing.tiny_controlnet import save_controlnet_single_file, tiny_controlnet, tiny_sd1_x8_pipeline
    from lorastudio.testing.tiny_sd import save_sd1_single_file, tiny_sdxl_pipeline

    root = tmp_path_factory.mktemp("cn-models")
    for d in ("Stable-diffusion", "Lora", "VAE", "ControlNet"):
        (root / d).mkdir()
    pipe = tiny_sd1_x8_pipeline(seed=0)
    save_sd1_single_file(pipe, root / "Stable-diffusion" / "tiny-sd1-x8.safetensors")
    cn_a, cn_b = tiny_controlnet(pipe.unet, seed=5), tiny_controlnet(pipe.unet, seed=6)
    save_controlnet_single_file(cn_a, pipe.unet.config, root / "ControlNet" / "control_tiny_canny.safetensors")
    save_controlnet_single_file(cn_a, pipe.unet.config, root / "ControlNet" / "control_tiny_bare_fp16.safetensors",
                                prefix="", dtype=torch.float16)
    cn_b.save_pretrained(root / "ControlNet" / "controlnet-tiny-folder")
    sdxl = tiny_sdxl_pipeline(seed=0)
    tiny_controlnet(sdxl.unet, seed=7).save_pretrained(root / "ControlNet" / "controlnet-tiny-sdxl")
    return {"root": root, "pipe": pipe, "a": cn_a, "b": cn_b}


@pytest.fixture(scope="module")
def cn_engine(cn_setup, tmp_path_factory):
    from lorastudio.core.settings import StudioSettings
    from lorastudio.generation.engine import GenerationEngine

    settings = StudioSettings(models_dir=cn_setup["root"], outdir=tmp_path_factory.mktemp("out"), device="cpu",
                              include_bundled=False)
    engine = GenerationEngine(settings)
    engine.load("tiny-sd1-x8")
    return engine


def picture(seed: int, size=(64, 64)) -> Image.Image:
    rng = np.random.RandomState(seed)
    return Image.fromarray((rng.rand(size[1], size[0], 3) * 255).astype(np.uint8))


def unit(**kw):
    return {"module": "none", "model": "control_tiny_canny", "image": picture(1), **kw}


def reference_pipeline(engine, controlnet):
    """diffusers' own pipeline over the loaded modules, with a scheduler built here (A1111's Euler)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionControlNetPipeline

    p = engine.model.pipe
    ref = StableDiffusionControlNetPipeline(vae=p.vae, text_encoder=p.text_encoder, tokenizer=p.tokenizer, unet=p.unet,
                                            controlnet=controlnet, scheduler=EulerDiscreteScheduler(
                                                num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                                beta_schedule="scaled_linear"),
                                            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    ref.set_progress_bar_config(disable=True)
    return ref


def test_every_layout_loads_the_same_weights(cn_setup, cn_engine):
    from lorastudio.models.controlnet import find_controlnet, load_controlnet

    model = cn_engine.model
    want = cn_setup["a"].state_dict()
    for name, tol in (("control_tiny_canny", 0.0), ("control_tiny_bare_fp16", 1e-2)):
        got = load_controlnet(find_controlnet(cn_setup["root"], name).path, model.family, model.pipe,
                              cn_engine.options(model.family)).state_dict()
        assert got.keys() == want.keys()
        assert max(float((got[k] - want[k]).abs().max()) for k in want) <= tol, name  # fp16 file: its rounding
    got = load_controlnet(find_controlnet(cn_setup["root"], "controlnet-tiny-folder").path, model.family, model.pipe,
                          cn_engine.options(model.family)).state_dict()
    want_b = cn_setup["b"].state_dict()
    assert all(torch.equal(got[k], want_b[k]) for k in want_b)


@pytest.mark.pixels
def test_txt2img_equals_diffusers_controlnet_pipeline(cn_setup, cn_engine):
    r = cn_engine.txt2img(dict(prompt="a red circle", seed=3, **SMALL), save=False, controlnet=[unit()])
    plain = cn_engine.txt2img(dict(prompt="a red circle", seed=3, **SMALL), save=False)
    ref = reference_pipeline(cn_engine, cn_setup["a"])(
        "a red circle", image=picture(1), width=64, height=64, num_inference_steps=3, guidance_scale=5.0,
        generator=torch.Generator().manual_seed(3)).images[0]
    assert max_level_difference(plain.images[0].image, r.images[0].image) > 10  # the control acts
    assert_same_picture(ref, r.images[0].image)


@pytest.mark.pixels
@pytest.mark.parametrize("change", [dict(weight=0.0), dict(guidance_end=0.0)])
def test_weight_zero_or_no_steps_equals_no_controlnet(cn_engine, change):
    p = dict(prompt="a blue square", seed=8, **SMALL)
    plain = cn_engine.txt2img(p, save=False)
    r = cn_engine.txt2img(p, save=False, controlnet=[unit(**change)])
    assert_same_picture(plain.images[0].image, r.images[0].image)


@pytest.mark.pixels
def test_two_units_equal_diffusers_multi_controlnet(cn_setup, cn_engine):
    units = [unit(weight=0.7), unit(model="controlnet-tiny-folder", image=picture(2), weight=1.2,
                                    guidance_start=0.3)]
    r = cn_engine.txt2img(dict(prompt="two units", seed=5, **SMALL), save=False, controlnet=units)
    ref = reference_pipeline(cn_engine, [cn_setup["a"], cn_setup["b"]])(
        "two units", image=[picture(1), picture(2)], controlnet_conditioning_scale=[0.7, 1.2],
        control_guidance_start=[0.0, 0.3], control_guidance_end=[1.0, 1.0], width=64, height=64,
        num_inference_steps=3, guidance_scale=5.0, generator=torch.Generator().manual_seed(5)).images[0]
    assert_same_picture(ref, r.images[0].image)
    assert "ControlNet 1: \"Module: none, Model: controlnet-tiny-folder, Weight: 1.2" in r.images[0].infotext


@pytest.mark.pixels
def test_controlnet_more_important_is_diffusers_guess_mode():
    """The extension scales SD 1.x's 13 ControlNet outputs by 0.825 ** (12 - i) and controls the
    conditional half only; diffusers' guess mode does the same with 10 ** (-(12 - i) / 12)
    (0.8254 ** (12 - i)): under 0.6% apart on the smallest scale, inside the picture tolerance.
    The UNet here has SD's four levels, so there are 13 outputs as in the real model."""
    from diffusers import UNet2DConditionModel

    from lorastudio.generation.controlnet_units import ControlNetUnit, prepare_control
    from lorastudio.generation.txt2img import run_txt2img
    from lorastudio.models.families.registry import family_by_name
    from lorastudio.models.loaded import LoadedModel
    from lorastudio.testing.tiny_controlnet import tiny_controlnet, tiny_sd1_x8_pipeline
    from lorastudio.testing.tiny_sd import _SD1_UNET, _seeded

    pipe = tiny_sd1_x8_pipeline(seed=0)
    with _seeded(3):
        pipe.unet = UNet2DConditionModel(**{**_SD1_UNET, "block_out_channels": (16, 16, 32, 32),
                                            "down_block_types": ("CrossAttnDownBlock2D",) * 2 + ("DownBlock2D",) * 2,
                                            "up_block_types": ("UpBlock2D",) * 2 + ("CrossAttnUpBlock2D",) * 2}).eval()
    pipe.register_modules(unet=pipe.unet)
    cn = tiny_controlnet(pipe.unet, seed=4)
    model = LoadedModel(family_by_name("sd1"), pipe, path=None, name="in-memory", sha256=None)

    def ours(mode):
        plan = prepare_control([ControlNetUnit(model="cn", image=picture(1), control_mode=mode)], width=64, height=64,
                               cfg=True, load=lambda name: (cn, "cn"))
        return run_txt2img(model, _params(seed=6), activate_loras=lambda tags: [], model_hash=None, save_to=None,
                           control=plan).images[0].image

    balanced, important = ours("Balanced"), ours("ControlNet is more important")
    assert len(cn(torch.zeros(2, 4, 8, 8), 1, torch.zeros(2, 77, 32), torch.zeros(2, 3, 64, 64),
                  return_dict=False)[0]) + 1 == 13
    from diffusers import StableDiffusionControlNetPipeline

    ref_pipe = StableDiffusionControlNetPipeline.from_pipe(pipe, controlnet=cn)
    ref_pipe.scheduler = _euler()
    ref = ref_pipe("guess", image=picture(1), guess_mode=True, width=64, height=64, num_inference_steps=3,
                   guidance_scale=5.0, generator=torch.Generator().manual_seed(6)).images[0]
    assert max_level_difference(balanced, important) > 5
    assert_same_picture(ref, important)


def _params(**kw):
    from lorastudio.core.params import validate_params

    return validate_params(dict(prompt="guess", **SMALL, **kw))


def _euler():
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                  beta_schedule="scaled_linear")


def test_img2img_with_a_unit_runs_and_weight_zero_is_plain(cn_engine):
    p = dict(prompt="img2img", seed=2, denoising_strength=0.6, **SMALL)
    plain = cn_engine.img2img(p, [picture(4)], save=False)
    zero = cn_engine.img2img(p, [picture(4)], save=False, controlnet=[unit(weight=0.0)])
    full = cn_engine.img2img(p, [picture(4)], save=False, controlnet=[unit(image=None)])  # the init image controls
    assert_same_picture(plain.images[0].image, zero.images[0].image)
    assert max_level_difference(plain.images[0].image, full.images[0].image) > 5
    assert "ControlNet 0: " in full.images[0].infotext


def test_wrong_family_controlnet_refused_by_name(cn_engine):
    with pytest.raises(ModelFileError) as e:
        cn_engine.txt2img(dict(prompt="x", seed=1, **SMALL), save=False,
                          controlnet=[unit(model="controlnet-tiny-sdxl")])
    msg = str(e.value)
    assert "controlnet-tiny-sdxl" in msg and "SDXL ControlNet" in msg and "SD 1.x" in msg


def test_missing_model_and_missing_weights_are_named(cn_engine):
    from lorastudio.core.errors import NotFound

    with pytest.raises(NotFound) as e:
        cn_engine.txt2img(dict(prompt="x", **SMALL), save=False, controlnet=[unit(model="control_tiny_cany")])
    assert "control_tiny_canny" in str(e.value)
    with pytest.raises(InvalidParameter) as e:
        cn_engine.txt2img(dict(prompt="x", **SMALL), save=False, controlnet=[unit(module="openpose")])
    assert "body_pose_model.pth" in str(e.value) and "ControlNetPreprocessor" in str(e.value)



def _mean_latents(vae, image):
    """The init picture encoded to the VAE posterior's mean (the project's img2img convention)."""
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    with torch.no_grad():
        return vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor


# 4 steps at denoising strength 0.5: A1111 runs int(0.5 * 4) + 1 = 3 of them, diffusers' strength 0.75.
I2I = dict(prompt="a cat", seed=4, denoising_strength=0.5, width=64, height=64, steps=4, cfg_scale=5.0,
           sampler="Euler", scheduler="Automatic")


@pytest.mark.pixels
def test_img2img_and_inpaint_equal_diffusers_controlnet_pipelines(cn_setup, cn_engine):
    """diffusers' StableDiffusionControlNetImg2ImgPipeline / ...InpaintPipeline on the same modules, the
    init picture encoded to the VAE mean (the pipelines would sample it with the seed's generator)."""
    from diffusers import StableDiffusionControlNetImg2ImgPipeline, StableDiffusionControlNetInpaintPipeline

    p = cn_engine.model.pipe
    init = picture(4)
    # the pipelines default to a conditioning scale of 0.8 (img2img) and 0.5 (inpaint); a unit of weight 1 is 1
    common = dict(control_image=picture(1), controlnet_conditioning_scale=1.0, num_inference_steps=4, strength=0.75,
                  guidance_scale=5.0, width=64, height=64)
    ours = cn_engine.img2img(I2I, [init], save=False, controlnet=[unit()]).images[0]
    ref = StableDiffusionControlNetImg2ImgPipeline.from_pipe(p, controlnet=cn_setup["a"])
    ref.scheduler = _euler()
    want = ref("a cat", image=_mean_latents(p.vae, init), generator=torch.Generator().manual_seed(4), **common)
    assert_same_picture(want.images[0], ours.image)
    assert "ControlNet 0: \"Module: none, Model: control_tiny_canny" in ours.infotext

    # inpainting: the left half repainted, no blur; the original is pasted back over the right half (A1111)
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    opts = {"mask_blur": 0, "inpainting_fill": 1}
    ours = cn_engine.img2img(I2I, [init], mask, options=opts, save=False, controlnet=[unit()]).images[0]
    plain = cn_engine.img2img(I2I, [init], mask, options=opts, save=False).images[0]
    zero = cn_engine.img2img(I2I, [init], mask, options=opts, save=False, controlnet=[unit(weight=0.0)]).images[0]
    ref = StableDiffusionControlNetInpaintPipeline.from_pipe(p, controlnet=cn_setup["a"])
    ref.scheduler = _euler()
    ref._encode_vae_image = lambda image, generator: _mean_latents_t(p.vae, image)
    want = ref("a cat", image=init, mask_image=mask, generator=torch.Generator().manual_seed(4), **common).images[0]
    want = Image.composite(want, init, mask)  # A1111's overlay: outside the mask, the original pixels
    assert_same_picture(want, ours.image)
    assert np.array_equal(np.asarray(ours.image)[:, 32:], np.asarray(init)[:, 32:])
    idle = cn_engine.img2img(I2I, [init], mask, options=opts, save=False, controlnet=[unit(guidance_end=0.0)])
    assert_same_picture(plain.image, zero.image)  # weight 0 is plain inpainting
    assert np.array_equal(np.asarray(plain.image), np.asarray(idle.images[0].image))  # no step: the same call
    assert max_level_difference(plain.image, ours.image) > 5  # and the unit acts
    with pytest.raises(InvalidParameter) as e:
        cn_engine.img2img(I2I, [init], mask, options={"inpainting_fill": 2}, save=False, controlnet=[unit()])
    assert e.value.field == "inpainting_fill"


def test_only_masked_crops_each_unit_picture_as_the_extension_does():
    """The unit's picture fitted to the init image's frame (its resize mode), cropped to the masked
    region, fitted to the generation's size, preprocessed; inpaint_only's mask likewise."""
    from lorastudio.generation.controlnet_units import ControlNetUnit, ControlPlan

    wide = picture(11, size=(256, 128))  # another aspect than the 128 x 128 init image: "Just Resize" first
    mask = Image.new("L", (128, 128), 0)
    mask.paste(255, (80, 40, 112, 72))
    plain = ControlNetUnit(module="none", model="m", image=wide, resize_mode="Just Resize")
    masked = ControlNetUnit(module="inpaint_only", model="m", image=wide, resize_mode="Just Resize")
    plan = ControlPlan([plain, masked], [None, None], [None, None], ["m", "m"], sources=[wide, wide],
                       mask_sources=[None, mask])
    cropped = plan.for_masked_region((80, 40, 112, 72), (128, 128), 64, 64)
    # Written here with Pillow alone: resize to the frame, crop, resize to 64 x 64 (same aspect: a plain resize).
    want = wide.resize((128, 128), Image.LANCZOS).crop((80, 40, 112, 72)).resize((64, 64), Image.LANCZOS)
    for got in cropped.maps:
        # Pillow's resampling is integer arithmetic; one level of slack for its rounding between builds.
        assert max_level_difference(got, want) <= 1
    assert cropped.inpaint_masks[0] is None
    assert np.asarray(cropped.inpaint_masks[1]).min() == 255  # the crop lies inside the masked square


def test_only_masked_inpaint_with_a_unit(cn_engine):
    init = picture(4, size=(128, 128))
    mask = Image.new("L", (128, 128), 0)
    mask.paste(255, (80, 40, 112, 72))
    opts = {"mask_blur": 0, "inpainting_fill": 1, "inpaint_full_res": True, "inpaint_full_res_padding": 0}
    big = unit(image=picture(1, size=(128, 128)))
    ours = cn_engine.img2img(I2I, [init], mask, options=opts, save=False, controlnet=[big]).images[0]
    zero = cn_engine.img2img(I2I, [init], mask, options=opts, save=False, controlnet=[{**big, "weight": 0.0}])
    assert ours.image.size == (128, 128)
    outside = np.ones((128, 128), bool)
    outside[40:72, 80:112] = False
    assert np.array_equal(np.asarray(ours.image)[outside], np.asarray(init)[outside])  # pasted back over the frame
    assert max_level_difference(ours.image, zero.images[0].image) > 5  # the unit acts inside the region
    assert "Inpaint area: Only masked" in ours.infotext and "ControlNet 0: " in ours.infotext


def _mean_latents_t(vae, pixels):
    with torch.no_grad():
        return vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor


@pytest.mark.pixels
def test_hires_second_pass_with_units_is_txt2img_then_img2img_with_them(cn_engine):
    """Hires fix = first pass with the unit, Lanczos, img2img with the unit, its map made at the hires size
    (the extension's hr_option "Both"); "Low res only" leaves the second pass plain. The img2img with a
    unit is itself held against diffusers' pipeline above."""
    # 4 steps at 0.6: the second pass runs 4 of int(4 / 0.6) = 6, as img2img at 0.6 does of 6 (int(3.6) + 1)
    base = dict(SMALL, prompt="a red circle", seed=3, denoising_strength=0.6, steps=4)
    hires = dict(base, enable_hr=True, hr_upscaler="Lanczos", hr_scale=1.5)
    both = cn_engine.txt2img(hires, save=False, controlnet=[unit()]).images[0]
    low_only = cn_engine.txt2img(hires, save=False, controlnet=[unit(hr_option="Low res only")]).images[0]
    first = cn_engine.txt2img(base, save=False, controlnet=[unit()]).images[0].image
    big = first.resize((96, 96), resample=Image.Resampling.LANCZOS)
    second = dict(base, steps=6, width=96, height=96)
    ref_both = cn_engine.img2img(second, [big], save=False, controlnet=[unit()]).images[0].image
    ref_low = cn_engine.img2img(second, [big], save=False).images[0].image
    assert both.image.size == (96, 96)
    assert_same_picture(ref_both, both.image)
    assert_same_picture(ref_low, low_only.image)
    assert max_level_difference(both.image, low_only.image) > 5
    assert "Hires upscaler: Lanczos" in both.infotext and "Hr Option: Low res only" in low_only.infotext
    with pytest.raises(Exception) as e:
        cn_engine.txt2img(hires, save=False, controlnet=[unit(hr_option="Sometimes")])
    assert "hr_option" in str(e.value)
