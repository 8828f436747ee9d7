"""FLUX.1 ControlNets (diffusers' FluxControlNetModel, the InstantX / Shakker-Labs layout): a diffusers
folder and a single file in diffusers' names, our picture vs diffusers' FluxControlNetPipeline on the
same weights, and ControlNets of another family refused by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from lorastudio.core.errors import InvalidParameter, ModelFileError
from lorastudio.testing.pixels import assert_same_picture, max_level_difference

P = dict(prompt="a red circle", width=32, height=32, steps=2, seed=11, sampler="Euler (flow)", guidance=3.5)


def picture(seed: int, size=(32, 32)) -> Image.Image:
    return Image.fromarray((np.random.RandomState(seed).rand(size[1], size[0], 3) * 255).astype(np.uint8))


@pytest.fixture(scope="module")
def flux_cn(family_root, tiny_pipes):
    from lorastudio.testing.tiny_controlnet import save_controlnet_single_file, tiny_controlnet, tiny_flux_controlnet
    from lorastudio.testing.tiny_controlnet import tiny_sd1_x8_pipeline

    folder = family_root / "ControlNet"
    folder.mkdir(exist_ok=True)
    cn = tiny_flux_controlnet(tiny_pipes["flux"].transformer, seed=3)
    cn.save_pretrained(folder / "flux-tiny-controlnet")
    save_file({k: v.contiguous() for k, v in cn.state_dict().items()}, str(folder / "flux-tiny-cn-file.safetensors"))
    sd = tiny_sd1_x8_pipeline(seed=0)
    save_controlnet_single_file(tiny_controlnet(sd.unet, seed=5), sd.unet.config,
                                folder / "control_tiny_sd15.safetensors")
    return cn


@pytest.mark.pixels
def test_flux_controlnet_equals_diffusers_pipeline(flux_cn, family_engine, tiny_pipes):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxControlNetPipeline

    engine = family_engine("flux1-tiny.safetensors")
    unit = {"module": "none", "model": "flux-tiny-controlnet", "image": picture(1)}
    ours = engine.txt2img(P, save=False, controlnet=[unit]).images[0]
    single = engine.txt2img(P, save=False, controlnet=[{**unit, "model": "flux-tiny-cn-file"}]).images[0]
    plain = engine.txt2img(P, save=False).images[0]
    ref_pipe = FluxControlNetPipeline.from_pipe(engine.model.pipe, controlnet=flux_cn)
    ref_pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(tiny_pipes["flux"].scheduler.config)
    # The pipeline encodes the control picture by sampling the VAE posterior with the call's generator, and
    # lorastudio draws the starting noise from the seed before the call (A1111's order): the reference is
    # given that noise as `latents` and the generator after that draw.
    g = torch.Generator().manual_seed(11)
    pipe = engine.model.pipe
    c, f = pipe.transformer.config.in_channels // 4, pipe.vae_scale_factor * 2
    noise = torch.randn((1, c, 2 * (32 // f), 2 * (32 // f)), generator=g)
    latents = pipe._pack_latents(noise, 1, c, noise.shape[2], noise.shape[3])
    ref = ref_pipe("a red circle", control_image=picture(1), width=32, height=32, num_inference_steps=2,
                   guidance_scale=3.5, latents=latents, generator=g).images[0]
    assert max_level_difference(plain.image, ours.image) > 5  # the control acts
    assert_same_picture(ref, ours.image)
    assert_same_picture(ours.image, single.image)  # the single file holds the same ControlNet
    assert 'ControlNet 0: "Module: none, Model: flux-tiny-controlnet' in ours.infotext
    with pytest.raises(InvalidParameter) as e:
        engine.txt2img(P, save=False, controlnet=[{**unit, "control_mode": "My prompt is more important"}])
    assert "control_mode" in e.value.field
    # img2img, inpaint and the hires second pass are refused, naming the way that works
    with pytest.raises(InvalidParameter) as e:
        engine.img2img(dict(P, denoising_strength=0.6), [picture(2)], save=False, controlnet=[unit])
    assert "txt2img only" in str(e.value) and "img2img" in str(e.value)
    hires = dict(P, enable_hr=True, hr_upscaler="Lanczos", hr_scale=2, denoising_strength=0.6)
    with pytest.raises(InvalidParameter) as e:
        engine.txt2img(hires, save=False, controlnet=[unit])
    assert "Low res only" in str(e.value)
    low = engine.txt2img(hires, save=False, controlnet=[{**unit, "hr_option": "Low res only"}]).images[0]
    assert low.image.size == (64, 64) and "Hr Option: Low res only" in low.infotext
    with pytest.raises(ModelFileError) as e:  # an SD 1.x ControlNet for a FLUX.1 model
        engine.txt2img(P, save=False, controlnet=[{**unit, "model": "control_tiny_sd15"}])
    assert "control_tiny_sd15" in str(e.value) and "SD 1.x ControlNet" in str(e.value) and "FLUX.1" in str(e.value)
    with pytest.raises(ModelFileError) as e:  # and a FLUX.1 one for an SD 1.x model
        family_engine("tiny-sd1.safetensors").txt2img(dict(prompt="x", width=32, height=32, steps=1), save=False,
                                                      controlnet=[unit])
    assert "flux-tiny-controlnet" in str(e.value) and "FLUX.1 ControlNet" in str(e.value)
