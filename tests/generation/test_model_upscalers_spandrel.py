"""Upscaler files spandrel recognises: tiny random ESRGAN and SwinIR state dicts in the real key layouts.

spandrel imports torchvision; it must be the torchvision built for the installed torch (a CPU torch
needs the CPU torchvision wheel). Without it these tests fail at import, as a missing dependency should.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from lorastudio.core.errors import ModelFileError, PickleRefused
from lorastudio.generation.model_upscalers import load_upscaler, upscale_tiled, upscaler_function
from lorastudio.testing.pixels import assert_same_picture


def _esrgan(scale: int, seed: int = 0):
    from spandrel.architectures.ESRGAN import ESRGAN as RRDBNet

    torch.manual_seed(seed)
    return RRDBNet(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=scale).eval()


def _swinir(seed: int = 0):
    from spandrel.architectures.SwinIR import SwinIR

    torch.manual_seed(seed)
    return SwinIR(upscale=2, img_size=16, window_size=4, embed_dim=12, depths=[1], num_heads=[2], mlp_ratio=2,
                  upsampler="pixelshuffle", resi_connection="1conv").eval()


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("up") / "models"
    for sub in ("ESRGAN", "SwinIR", "RealESRGAN"):
        (root / sub).mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in _esrgan(4).state_dict().items()}, str(root / "ESRGAN" / "tiny-esrgan.safetensors"))
    save_file({k: v.contiguous() for k, v in _esrgan(2, seed=1).state_dict().items()},
              str(root / "ESRGAN" / "tiny-esrgan-two.safetensors"))
    save_file({k: v.contiguous() for k, v in _swinir().state_dict().items()}, str(root / "SwinIR" / "tiny-swinir.safetensors"))
    torch.save({"params_ema": _esrgan(4).state_dict()}, root / "RealESRGAN" / "tiny-realesrgan.pth")
    save_file({"first_stage_model.x": torch.zeros(2)}, str(root / "ESRGAN" / "not-an-upscaler.safetensors"))
    return root


def photo(w=36, h=28, seed=3):
    return Image.fromarray((np.random.RandomState(seed).rand(h, w, 3) * 255).astype(np.uint8))


@pytest.mark.parametrize("name,scale,arch", [("tiny-esrgan", 4, "ESRGAN"), ("tiny-esrgan-two", 2, "ESRGAN"),
                                             ("tiny-swinir", 2, "SwinIR")])
def test_spandrel_recognises_the_files_and_their_scale(root, name, scale, arch):
    sub = "SwinIR" if "swinir" in name else "ESRGAN"
    desc = load_upscaler(root / sub / f"{name}.safetensors", allow_pickle=False)
    assert desc.scale == scale and desc.architecture.name == arch
    out = upscaler_function(name, root, allow_pickle=False)(photo(), 36 * scale, 28 * scale)
    assert out.size == (36 * scale, 28 * scale)


@pytest.mark.pixels
def test_tiled_equals_untiled_for_esrgan(root):
    """ESRGAN's receptive field here (one RRDB block, ~12 px) fits in a 16 px overlap; equal to the
    rounding of convolutions run on different shapes (testing.pixels)."""
    desc = load_upscaler(root / "ESRGAN" / "tiny-esrgan.safetensors", allow_pickle=False)
    whole = upscale_tiled(desc.model, photo(), 4, tile=0)
    assert_same_picture(whole, upscale_tiled(desc.model, photo(), 4, tile=12, overlap=16))


def test_pickles_only_when_allowed_and_weights_only(root):
    path = root / "RealESRGAN" / "tiny-realesrgan.pth"
    with pytest.raises(PickleRefused):
        load_upscaler(path, allow_pickle=False)
    assert load_upscaler(path, allow_pickle=True).scale == 4


def test_not_an_upscaler_is_named(root):
    with pytest.raises(ModelFileError) as e:
        load_upscaler(root / "ESRGAN" / "not-an-upscaler.safetensors", allow_pickle=False)
    assert "not-an-upscaler.safetensors" in str(e.value)
