"""`lorastudio generate --controlnet ... --control-image ...`, and --from-png reading the units back."""

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from lorastudio.interfaces.cli.app import app

runner = CliRunner()
ARGS = ["--steps", "2", "--width", "64", "--height", "64", "--seed", "5", "--device", "cpu", "--sampler", "Euler"]


def cli(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output + (getattr(result, "stderr", "") or "")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    from lorastudio.testing.tiny_controlnet import write_controlnet_models_root

    root = tmp_path_factory.mktemp("cn-cli") / "models"
    write_controlnet_models_root(root)
    pic = np.zeros((64, 64, 3), np.uint8)
    pic[16:48, 20:44] = 220
    Image.fromarray(pic).save(root.parent / "pose.png")
    return root


def test_controlnet_flags_and_from_png(root, tmp_path):
    from lorastudio.core.png_text import read_infotext

    code, text = cli("generate", "a box", "--models-dir", root, *ARGS, "--outdir", tmp_path / "a",
                     "--controlnet", "control_tiny", "--control-image", root.parent / "pose.png",
                     "--control-module", "canny", "--control-weight", "0.9")
    assert code == 0, text
    (first,) = (tmp_path / "a").glob("txt2img-images/*/*.png")
    info = read_infotext(first)
    assert 'ControlNet 0: "Module: canny, Model: control_tiny [' in info and "Weight: 0.9, " in info

    code, text = cli("generate", "a box", "--models-dir", root, *ARGS, "--outdir", tmp_path / "plain")
    (plain,) = (tmp_path / "plain").glob("txt2img-images/*/*.png")
    assert not np.array_equal(np.asarray(Image.open(plain)), np.asarray(Image.open(first)))

    code, text = cli("generate", "--from-png", first, "--models-dir", root, "--device", "cpu", "--outdir",
                     tmp_path / "b", "--control-image", root.parent / "pose.png")
    assert code == 0, text
    (again,) = (tmp_path / "b").glob("txt2img-images/*/*.png")
    # the same call in the same process: the same pixels, bit for bit
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(first)))

    code, text = cli("generate", "--from-png", first, "--models-dir", root, "--device", "cpu", "--outdir",
                     tmp_path / "c")
    assert code != 0 and "--control-image" in text and "canny with control_tiny [" in text
    assert not (tmp_path / "c").exists() or not list((tmp_path / "c").rglob("*.png"))


def test_control_flags_without_a_model_are_refused(root, tmp_path):
    code, text = cli("generate", "x", "--models-dir", root, *ARGS, "--outdir", tmp_path,
                     "--control-image", root.parent / "pose.png")
    assert code != 0 and "--controlnet" in text
