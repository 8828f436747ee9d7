"""Model upscalers: folders, tiling, pickles refused (what needs no spandrel model is tested here;
spandrel's own architectures in test_model_upscalers_spandrel.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lorastudio.core.errors import PickleRefused
from lorastudio.generation.model_upscalers import find_upscaler, upscale_tiled, upscaler_entries
from lorastudio.generation.upscalers import upscaler_function
from lorastudio.testing.pixels import assert_same_picture


class SubPixelNet(torch.nn.Module):
    """A real (tiny, random) super-resolution network: ESPCN's conv-conv-pixel-shuffle, 2 px receptive radius."""

    def __init__(self, scale: int = 4, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.c1, self.c2 = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 3 * scale * scale, 3, padding=1)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.3
        self.shuffle = torch.nn.PixelShuffle(scale)

    def forward(self, x):
        return torch.sigmoid(self.shuffle(self.c2(torch.relu(self.c1(x)))))


def photo(w=70, h=50, seed=1):
    return Image.fromarray((np.random.RandomState(seed).rand(h, w, 3) * 255).astype(np.uint8))


@pytest.mark.pixels
@pytest.mark.parametrize("tile,overlap", [(16, 4), (24, 8), (7, 2)])
def test_tiled_equals_untiled(tile, overlap):
    """Overlap >= the receptive radius: each tile's core sees what the whole picture shows it. Equal to the
    rounding of convolutions run on different shapes (see testing.pixels)."""
    net = SubPixelNet().eval()
    whole = upscale_tiled(net, photo(), 4, tile=0)
    tiled = upscale_tiled(net, photo(), 4, tile=tile, overlap=overlap)
    assert whole.size == (280, 200)
    assert_same_picture(whole, tiled)
    # too little overlap is visibly wrong along the seams: the comparison can fail
    seams = upscale_tiled(net, photo(), 4, tile=tile, overlap=0)
    assert np.abs(np.asarray(seams, float) - np.asarray(whole, float)).max() > 2


def test_folders_names_and_pickles(tmp_path):
    root = tmp_path / "models"
    for sub, name in (("ESRGAN", "4x-UltraSharp.safetensors"), ("RealESRGAN", "RealESRGAN_x2plus.pth"),
                      ("upscale_models", "1x_clean.safetensors"), ("SwinIR", "notes.txt")):
        (root / sub).mkdir(parents=True)
        if name.endswith(".pth"):
            torch.save({"params_ema": {"w": torch.zeros(2)}}, root / sub / name)
        else:
            from safetensors.torch import save_file

            save_file({"w": torch.zeros(2)}, str(root / sub / name))
    entries = upscaler_entries(root)
    assert [(e.name, e.folder, e.scale_from_name) for e in entries] == [
        ("1x_clean", "upscale_models", 1), ("4x-UltraSharp", "ESRGAN", 4), ("RealESRGAN_x2plus", "RealESRGAN", 2)]
    with pytest.raises(PickleRefused) as e:
        upscaler_function("RealESRGAN_x2plus", root, allow_pickle=False)
    assert "RealESRGAN_x2plus.pth" in str(e.value) and "--allow-pickle" in str(e.value)
    with pytest.raises(Exception) as e:
        find_upscaler(root, "4x-UltraShrp")
    assert "4x-UltraSharp" in str(e.value)


def test_builtin_lanczos_resizes_exactly():
    out = upscaler_function("Lanczos", None, allow_pickle=False)(photo(), 140, 100)
    assert out.size == (140, 100)
    assert np.array_equal(np.asarray(out), np.asarray(photo().resize((140, 100), Image.Resampling.LANCZOS)))


def test_upscale_command(tmp_path):
    from typer.testing import CliRunner

    from lorastudio.core.png_text import read_infotext
    from lorastudio.interfaces.cli.app import app

    photo().save(tmp_path / "in.png")
    args = ["upscale", str(tmp_path / "in.png"), "--upscaler", "Lanczos", "--scale", "2", "--models-dir",
            str(tmp_path / "models"), "--outdir", str(tmp_path / "out"), "--device", "cpu"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    (path,) = (tmp_path / "out").glob("extras-images/*/*.png")
    assert path.name == "00000-in.png" and Image.open(path).size == (140, 100)
    assert read_infotext(path) == "Postprocess upscale by: 2, Postprocess upscaler: Lanczos"
    r = CliRunner().invoke(app, args[:3] + ["4x-Missing"] + args[4:])
    assert r.exit_code != 0 and "4x-Missing" in r.output
    assert len(list((tmp_path / "out").rglob("*.png"))) == 1


def sticker(w=40, h=30, seed=2) -> Image.Image:
    """A transparent PNG as LINE stickers are: a coloured shape, clear around it, a soft edge between."""
    rng = np.random.RandomState(seed)
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[..., :3] = rng.rand(h, w, 3) * 255
    yy, xx = np.mgrid[0:h, 0:w]
    rgba[..., 3] = np.clip((10 - np.hypot(yy - h / 2, xx - w / 2)) * 60, 0, 255).astype(np.uint8)
    return Image.fromarray(rgba, "RGBA")


def test_transparency_goes_through_the_same_upscaler():
    """Extras keeps a sticker's alpha (A1111's drops it): colours and alpha each through the model."""
    from lorastudio.generation.upscalers import ImageUpscalers

    net = SubPixelNet().eval()
    upscalers = ImageUpscalers(extra={"Sub": lambda image, scale: upscale_tiled(net, image, 4, tile=0)})
    im = sticker()
    out = upscalers.to_size("Sub")(im, 160, 120)
    assert out.mode == "RGBA" and out.size == (160, 120)
    colours = upscale_tiled(net, im.convert("RGB"), 4, tile=0)
    alpha = upscale_tiled(net, Image.merge("RGB", [im.getchannel("A")] * 3), 4, tile=0).convert("L")
    assert np.array_equal(np.asarray(out)[..., :3], np.asarray(colours))
    assert np.array_equal(np.asarray(out)[..., 3], np.asarray(alpha))
    # a palette picture with a transparent colour keeps it too; an opaque one stays RGB
    palette = im.convert("RGB").quantize(8)
    palette.info["transparency"] = 0
    assert upscalers.to_size("Lanczos")(palette, 80, 60).mode == "RGBA"
    assert upscalers.to_size("Lanczos")(im.convert("RGB"), 80, 60).mode == "RGB"


def test_upscale_command_keeps_transparency(tmp_path):
    from typer.testing import CliRunner

    from lorastudio.interfaces.cli.app import app

    sticker().save(tmp_path / "sticker.png")
    r = CliRunner().invoke(app, ["upscale", str(tmp_path / "sticker.png"), "--upscaler", "Lanczos", "--scale", "2",
                                 "--models-dir", str(tmp_path / "models"), "--outdir", str(tmp_path / "out"),
                                 "--device", "cpu"])
    assert r.exit_code == 0, r.output
    (path,) = (tmp_path / "out").glob("extras-images/*/*.png")
    with Image.open(path) as out:
        assert out.mode == "RGBA" and out.size == (80, 60)
        want = sticker().getchannel("A").resize((80, 60), Image.Resampling.LANCZOS)
        assert np.array_equal(np.asarray(out.getchannel("A")), np.asarray(want))
