"""SDXL and FLUX.1 through GenerationEngine, from the files users keep and from diffusers folders."""

import numpy as np
import pytest
import torch

from lorastudio.core.infotext import parse_infotext
from lorastudio.core.infotext_params import params_from_infotext
from lorastudio.core.samplers import resolve_sampler
from lorastudio.testing.pixels import assert_same_picture

SMALL = dict(width=32, height=32, steps=2, cfg_scale=5.0)
FLUX_FILES = ["tiny-flux-aio.safetensors", "flux1-tiny.safetensors", "tiny-flux-diffusers"]


def arr(img):
    return np.asarray(img.convert("RGB"))


def gen(engine, **kw):
    return engine.txt2img({**SMALL, "prompt": "a red circle", "seed": 11, **kw}, save=False).images[0]


@pytest.mark.pixels
def test_sdxl_single_file_and_folder_give_the_same_reproducible_pixels(family_engine):
    single, folder = family_engine("tiny-sdxl.safetensors"), family_engine("tiny-sdxl-diffusers")
    a, b = gen(single, sampler="Euler"), gen(single, sampler="Euler")
    assert np.array_equal(arr(a.image), arr(b.image))
    assert arr(a.image).std() > 1  # a picture, not a flat field that would match anything
    # same weights, loaded by two paths: tensors laid out differently, so rounding may differ
    assert_same_picture(gen(folder, sampler="Euler").image, a.image)
    fields = parse_infotext(a.infotext)
    assert fields["Model"] == "tiny-sdxl" and len(fields["Model hash"]) == 10


@pytest.mark.pixels
@pytest.mark.parametrize("negative", ["", "blurry"])
def test_sdxl_matches_plain_diffusers_pipeline(family_engine, negative):
    # Same scheduler on both sides: this checks conditioning and denoising; the scheduler itself is
    # checked against A1111 in test_sampler_table.py.
    engine = family_engine("tiny-sdxl.safetensors")
    ours = gen(engine, sampler="Euler", negative_prompt=negative)
    pipe = engine.model.pipe
    pipe.scheduler = engine.model.family.make_scheduler(engine.model.base_scheduler_config, resolve_sampler("Euler"))
    ref = pipe("a red circle", negative_prompt=negative or None, width=32, height=32, num_inference_steps=2,
               guidance_scale=5.0, generator=torch.Generator().manual_seed(11)).images[0]
    assert_same_picture(ref, ours.image)  # two computations of one picture (see lorastudio.testing.pixels)


@pytest.mark.pixels
def test_flux_all_in_one_transformer_only_and_folder_agree(family_engine):
    images = [gen(family_engine(name), sampler="Euler") for name in FLUX_FILES]
    again = gen(family_engine(FLUX_FILES[1]), sampler="Euler")
    assert np.array_equal(arr(images[1].image), arr(again.image))
    assert arr(images[0].image).std() > 1
    for im in images[1:]:  # same weights, three loading paths
        assert_same_picture(im.image, images[0].image)
    # Forge's wording, which reads back as FLUX's flow-matching Euler
    fields = parse_infotext(images[1].infotext)
    assert (fields["Sampler"], fields["Schedule type"], fields["Distilled CFG Scale"]) == ("Euler", "Simple", "3.5")
    redo = family_engine(FLUX_FILES[1]).txt2img(params_from_infotext(images[1].infotext), save=False).images[0]
    assert np.array_equal(arr(redo.image), arr(images[1].image))


@pytest.mark.pixels
def test_flux_matches_plain_diffusers_pipeline(family_engine, tiny_pipes):
    from diffusers import FlowMatchEulerDiscreteScheduler

    engine = family_engine("flux1-tiny.safetensors")
    ours = gen(engine, sampler="Euler (flow)", guidance=3.5)
    pipe = engine.model.pipe
    # The scheduler the diffusers pipeline itself ships with, not one lorastudio built.
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(tiny_pipes["flux"].scheduler.config)
    ref = pipe("a red circle", width=32, height=32, num_inference_steps=2, guidance_scale=3.5,
               generator=torch.Generator().manual_seed(11)).images[0]
    assert arr(ref).std() > 1
    assert_same_picture(ref, ours.image)


def test_loading_and_generating_need_no_network(family_root, tmp_path, no_network):
    """Fresh loads of SD 1.x, SDXL and transformer-only FLUX.1 files with every socket connection refused."""
    from lorastudio.core.settings import StudioSettings
    from lorastudio.generation.engine import GenerationEngine

    engine = GenerationEngine(StudioSettings(models_dir=family_root, outdir=tmp_path, device="cpu",
                                             include_bundled=False))
    for name, sampler in [("tiny-sd1.safetensors", "Euler"), ("tiny-sdxl.safetensors", "Euler"),
                          ("flux1-tiny.safetensors", "Euler")]:
        r = engine.txt2img({**SMALL, "prompt": "a cat", "seed": 1, "model": name, "sampler": sampler})
        assert r.images[0].path.is_file()
    assert no_network.attempts == []


def test_flux_file_dtypes_are_cast_to_the_requested_one(tiny_pipes, tmp_path):
    import copy

    from lorastudio.models.families.base import LoadOptions
    from lorastudio.models.loader import load_model
    from lorastudio.testing.tiny_flux import save_flux_single_file

    half = copy.deepcopy(tiny_pipes["flux"]).to(torch.bfloat16)
    path = save_flux_single_file(half, tmp_path / "flux-bf16.safetensors", all_in_one=True)
    model = load_model(path, LoadOptions(dtype="float32", cache_dir=tmp_path / "cache"))
    for comp in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        dtypes = {p.dtype for p in getattr(model.pipe, comp).parameters()}
        assert dtypes == {torch.float32}, comp


@pytest.mark.parametrize("sampler", ["DPM++ 2M", "Euler Karras"])
def test_flux_refuses_samplers_it_cannot_run(family_engine, sampler, tmp_path):
    from lorastudio.core.errors import InvalidParameter

    with pytest.raises(InvalidParameter) as e:
        family_engine("flux1-tiny.safetensors").txt2img({**SMALL, "prompt": "x", "sampler": sampler},
                                                         outdir=tmp_path / "out")
    assert e.value.field == "sampler" and "FLUX.1" in str(e.value)
    assert not (tmp_path / "out").exists()
