"""Model upscalers read by spandrel: tiny random ESRGAN (old and new key layouts), Real-ESRGAN
compact and SwinIR files, the way users keep them in models/ESRGAN, models/RealESRGAN, models/SwinIR.

ESRGAN and compact outputs are compared with a plain-torch forward of the published architectures
(testing.tiny_upscalers), which does not go through spandrel."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from lorastudio.core.errors import ModelFileError, PickleRefused
from lorastudio.generation.model_upscalers import SPANDREL_INSTALL, load_upscaler, upscale_tiled
from lorastudio.generation.upscalers import upscaler_function
from lorastudio.testing.pixels import assert_same_picture, max_level_difference
from lorastudio.testing.tiny_upscalers import (
    compact_forward,
    compact_state_dict,
    rrdbnet_forward,
    rrdbnet_old_layout,
    rrdbnet_state_dict,
    swinir_state_dict,
)

# Our forward and spandrel's module do the same float32 operations in a different order/grouping
# (spandrel's RRDB concatenates the same way but its residual sums and in-place ops differ):
# 1e-4 of the [0, 1] range is far below one 8-bit level (1/255 = 4e-3).
FORWARD_TOL = 1e-4


def photo(w=24, h=20, seed=1):
    return Image.fromarray((np.random.RandomState(seed).rand(h, w, 3) * 255).astype(np.uint8))


def as_tensor(image):
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]


@pytest.fixture(scope="module")
def upscaler_root(tmp_path_factory, spandrel_importable):
    root = tmp_path_factory.mktemp("models")
    for sub in ("ESRGAN", "RealESRGAN", "SwinIR"):
        (root / sub).mkdir()
    esrgan4 = rrdbnet_state_dict(4, seed=1)  # Real-ESRGAN / BasicSR names
    esrgan2 = rrdbnet_state_dict(2, seed=2)
    compact = compact_state_dict(2, seed=3)
    save_file(esrgan4, str(root / "ESRGAN" / "4x-tiny-new.safetensors"))
    save_file(rrdbnet_old_layout(esrgan2), str(root / "ESRGAN" / "2x-tiny-old.safetensors"))
    save_file(compact, str(root / "RealESRGAN" / "realesr-tiny-x2.safetensors"))
    save_file(swinir_state_dict(2, seed=4), str(root / "SwinIR" / "swinir-tiny-x2.safetensors"))
    # A Real-ESRGAN-style pickle: weights under "params_ema", in the old layout.
    torch.save({"params_ema": rrdbnet_old_layout(esrgan2)}, root / "ESRGAN" / "2x-tiny-pickle.pth")
    return {"root": root, "esrgan4": esrgan4, "esrgan2": esrgan2, "compact": compact}


@pytest.mark.pixels
def test_architectures_scales_and_outputs(upscaler_root):
    root = upscaler_root["root"]
    x = as_tensor(photo())
    cases = [("ESRGAN/4x-tiny-new", "ESRGAN", 4, lambda: rrdbnet_forward(upscaler_root["esrgan4"], x)),
             ("ESRGAN/2x-tiny-old", "ESRGAN", 2, lambda: rrdbnet_forward(upscaler_root["esrgan2"], x)),
             ("RealESRGAN/realesr-tiny-x2", "RealESRGAN Compact", 2,
              lambda: compact_forward(upscaler_root["compact"], x, 2)),
             ("SwinIR/swinir-tiny-x2", "SwinIR", 2, None)]
    for rel, arch, scale, reference in cases:
        desc = load_upscaler(root / f"{rel}.safetensors", allow_pickle=False)
        assert (desc.architecture.name, desc.scale) == (arch, scale), rel
        with torch.no_grad():
            y = desc.model(x)
        assert y.shape == (1, 3, 20 * scale, 24 * scale), rel
        if reference is not None:
            with torch.no_grad():
                diff = float((y - reference()).abs().max())
            assert diff <= FORWARD_TOL, (rel, diff)
    # By name, as hires fix and Extras ask: the model's output, resized to the exact size asked.
    out = upscaler_function("4x-tiny-new", root, allow_pickle=False)(photo(), 96, 80)
    want = rrdbnet_forward(upscaler_root["esrgan4"], x).clamp(0, 1)[0].permute(1, 2, 0).numpy()
    assert out.size == (96, 80)
    assert_same_picture(want, out)
    # the comparison can fail: another ESRGAN's weights give another picture
    assert max_level_difference(upscaler_function("2x-tiny-old", root, allow_pickle=False)(photo(), 96, 80), out) > 10


@pytest.mark.pixels
def test_tiled_equals_untiled(upscaler_root):
    """Convolutional networks: with the overlap at least the receptive radius (tiny ESRGAN: 17 px at
    the input size plus 3 at the output size, i.e. under 19; compact: 4) each tile's core is what the
    whole picture gives, to the rounding of convolutions on other shapes (testing.pixels).
    SwinIR too, with the overlap covering its attention windows (below)."""
    root = upscaler_root["root"]
    pic = photo(40, 30, seed=5)
    for rel, overlap in (("ESRGAN/2x-tiny-old", 20), ("RealESRGAN/realesr-tiny-x2", 6)):
        desc = load_upscaler(root / f"{rel}.safetensors", allow_pickle=False)
        whole = upscale_tiled(desc.model, pic, desc.scale, tile=0)
        tiled = upscale_tiled(desc.model, pic, desc.scale, tile=16, overlap=overlap)
        assert whole.size == (80, 60)
        assert_same_picture(whole, tiled)
        seams = upscale_tiled(desc.model, pic, desc.scale, tile=16, overlap=0)
        assert max_level_difference(whole, seams) > 2, rel  # too little overlap shows
    # SwinIR (windows of 4 px, one stage of two blocks, the second shifted by 2): tile and overlap multiples
    # of the window keep the windows aligned with the whole picture's, and 16 px cover the attention's reach
    # plus the convolutions'; 8 px do not.
    desc = load_upscaler(root / "SwinIR/swinir-tiny-x2.safetensors", allow_pickle=False)
    whole = upscale_tiled(desc.model, pic, 2, tile=0)
    assert_same_picture(whole, upscale_tiled(desc.model, pic, 2, tile=16, overlap=16))
    assert max_level_difference(whole, upscale_tiled(desc.model, pic, 2, tile=16, overlap=8)) > 2


def test_pickles_refused_unless_allowed_and_then_weights_only(upscaler_root, tmp_path):
    root = upscaler_root["root"]
    with pytest.raises(PickleRefused) as e:
        upscaler_function("2x-tiny-pickle", root, allow_pickle=False)
    assert "2x-tiny-pickle.pth" in str(e.value) and "--allow-pickle" in str(e.value)
    desc = load_upscaler(root / "ESRGAN" / "2x-tiny-pickle.pth", allow_pickle=True)
    same = load_upscaler(root / "ESRGAN" / "2x-tiny-old.safetensors", allow_pickle=False)
    assert desc.scale == 2
    assert all(torch.equal(a, b) for a, b in zip(desc.model.state_dict().values(), same.model.state_dict().values()))
    # A pickle that would run code (any global beyond tensors and containers) is refused even when allowed.
    evil = tmp_path / "ESRGAN" / "4x-evil.pth"
    evil.parent.mkdir()
    torch.save({"params_ema": upscaler_root["esrgan2"], "hook": os.system}, evil)
    with pytest.raises(ModelFileError) as e:
        upscaler_function("4x-evil", tmp_path, allow_pickle=True)
    assert "4x-evil.pth" in str(e.value) and "weights_only=True" in str(e.value)


def test_without_spandrel_the_error_says_what_to_install(upscaler_root, monkeypatch):
    monkeypatch.setitem(sys.modules, "spandrel", None)  # what `import spandrel` meets when it is not installed
    with pytest.raises(ModelFileError) as e:
        upscaler_function("4x-tiny-new", upscaler_root["root"], allow_pickle=False)
    assert "4x-tiny-new.safetensors" in str(e.value) and SPANDREL_INSTALL in str(e.value)
    assert "torchvision" in str(e.value)


@pytest.mark.pixels
def test_hires_fix_with_a_model_upscaler_by_name(engine, sd1_models_root, spandrel_importable):
    """Hires fix = first pass, the ESRGAN model (run here through spandrel directly), img2img of that."""
    folder = sd1_models_root / "ESRGAN"
    folder.mkdir(exist_ok=True)
    path = folder / "2x-tiny-hires.safetensors"
    save_file(rrdbnet_state_dict(2, seed=9), str(path))
    base = dict(prompt="a red circle", width=32, height=32, steps=4, sampler="Euler", cfg_scale=5.0, seed=11,
                denoising_strength=0.6)
    try:
        assert "2x-tiny-hires" in engine.image_upscalers().names()
        hires = engine.txt2img({**base, "enable_hr": True, "hr_upscaler": "2x-tiny-hires", "hr_scale": 2}, save=False)
        first = engine.txt2img(base, save=False).images[0].image
        net = spandrel_importable.ModelLoader().load_from_state_dict(rrdbnet_state_dict(2, seed=9)).model.eval()
        with torch.no_grad():
            y = net(as_tensor(first)).clamp(0, 1)[0].mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        # int(4 / 0.6) = 6 steps, the last 4 run: what img2img at 0.6 runs of a 6-step schedule
        ref = engine.img2img({**base, "steps": 6, "width": 64, "height": 64}, [Image.fromarray(y)], save=False)
    finally:
        path.unlink()
    out = hires.images[0]
    assert out.image.size == (64, 64)
    assert "Hires upscaler: 2x-tiny-hires" in out.infotext and "Hires upscale: 2" in out.infotext
    assert_same_picture(ref.images[0].image, out.image)
    # the reference went through the model: far from a plain resize of the first pass
    assert max_level_difference(Image.fromarray(y), first.resize((64, 64), Image.Resampling.LANCZOS)) > 10
