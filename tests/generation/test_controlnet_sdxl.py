"""SDXL ControlNets: the single-file layout (label_emb) and a diffusers folder, against diffusers'
StableDiffusionXLControlNetPipeline on the same weights; an SD 1.x ControlNet is refused by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lorastudio.core.errors import ModelFileError
from lorastudio.testing.pixels import assert_same_picture, max_level_difference


@pytest.fixture(scope="module")
def sdxl_cn(tmp_path_factory):
    from lorastudio.core.settings import StudioSettings
    from lorastudio.generation.engine import GenerationEngine
    from lorastudio.testing.tiny_controlnet import (
        save_controlnet_single_file,
        tiny_controlnet,
        tiny_sd1_x8_pipeline,
        tiny_sdxl_x8_pipeline,
    )
    from lorastudio.testing.tiny_sd import save_sdxl_single_file

    root = tmp_path_factory.mktemp("sdxl-cn")
    for d in ("Stable-diffusion", "Lora", "VAE", "ControlNet"):
        (root / d).mkdir()
    pipe = tiny_sdxl_x8_pipeline(seed=0)
    save_sdxl_single_file(pipe, root / "Stable-diffusion" / "tiny-sdxl-x8.safetensors")
    cn = tiny_controlnet(pipe.unet, seed=9)
    save_controlnet_single_file(cn, pipe.unet.config, root / "ControlNet" / "controlnet-xl-tiny.safetensors")
    # the common SDXL form: diffusers' own names in one file (a renamed diffusion_pytorch_model.safetensors)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in cn.state_dict().items()},
              str(root / "ControlNet" / "controlnet-xl-diffusers-names.safetensors"))
    sd1 = tiny_sd1_x8_pipeline(seed=0)
    save_controlnet_single_file(tiny_controlnet(sd1.unet, seed=1), sd1.unet.config,
                                root / "ControlNet" / "control_sd15_tiny.safetensors")
    engine = GenerationEngine(StudioSettings(models_dir=root, outdir=tmp_path_factory.mktemp("o"), device="cpu",
                                             include_bundled=False))
    engine.load("tiny-sdxl-x8")
    return engine, cn


def picture(seed=1):
    return Image.fromarray((np.random.RandomState(seed).rand(64, 64, 3) * 255).astype(np.uint8))


@pytest.mark.pixels
def test_sdxl_single_file_controlnet_equals_diffusers(sdxl_cn):
    from diffusers import StableDiffusionXLControlNetPipeline

    from lorastudio.core.samplers import resolve_sampler

    engine, cn = sdxl_cn
    for name in ("controlnet-xl-tiny", "controlnet-xl-diffusers-names"):
        loaded = engine._load_controlnet(name)[0].state_dict()
        assert loaded.keys() == cn.state_dict().keys()
        assert all(torch.equal(loaded[k], v) for k, v in cn.state_dict().items()), name
    p = dict(prompt="a cube", seed=2, width=64, height=64, steps=3, cfg_scale=5.0, sampler="Euler")
    r = engine.txt2img(p, save=False, controlnet=[{"model": "controlnet-xl-tiny", "image": picture()}])
    plain = engine.txt2img(p, save=False)
    base = engine.model.pipe
    ref = StableDiffusionXLControlNetPipeline.from_pipe(base, controlnet=cn)
    # The scheduler A1111's "Euler" maps to (k-diffusion spacing from t=999, checked against A1111 in
    # test_sampler_table.py) on both sides: this compares the ControlNet conditioning.
    ref.scheduler = engine.model.family.make_scheduler(engine.model.base_scheduler_config, resolve_sampler("Euler"))
    ref.set_progress_bar_config(disable=True)
    want = ref("a cube", image=picture(), width=64, height=64, num_inference_steps=3, guidance_scale=5.0,
               generator=torch.Generator().manual_seed(2)).images[0]
    assert max_level_difference(plain.images[0].image, r.images[0].image) > 5
    assert_same_picture(want, r.images[0].image)


def test_sd15_controlnet_refused_on_sdxl(sdxl_cn):
    engine, _ = sdxl_cn
    with pytest.raises(ModelFileError) as e:
        engine.txt2img(dict(prompt="x", width=64, height=64, steps=2), save=False,
                       controlnet=[{"model": "control_sd15_tiny", "image": picture()}])
    assert "control_sd15_tiny" in str(e.value) and "SD 1.x ControlNet" in str(e.value) and "SDXL" in str(e.value)
