"""`lorastudio dataset mask`: u2net-style model or alpha -> `<image>.mask.png`, used by masked loss."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from lorastudio.core.errors import ModelFileError
from lorastudio.interfaces.cli.app import app
from lorastudio.testing.tiny_interrogators import write_tiny_u2net, write_tiny_wd14
from lorastudio.training.dataset.masks import load_segmentation_model

runner = CliRunner()


@pytest.fixture
def models(tmp_path):
    root = tmp_path / "models"
    write_tiny_u2net(root / "rembg" / "u2net.onnx", size=32)
    return root


def _reference_mask(rgb: np.ndarray) -> np.ndarray:
    """rembg's u2net pre/post-processing, written out for the tiny model (output = channel mean)."""
    x = rgb.astype(np.float64) / rgb.max()
    x = (x - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    m = x.mean(axis=2)
    m = (m - m.min()) / (m.max() - m.min())
    return (m * 255).astype(np.uint8)


def test_model_mask_matches_rembg_processing(tmp_path, models):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 200, (32, 32, 3), dtype=np.uint8)  # the model's own size: no resizing involved
    Image.fromarray(rgb).save(tmp_path / "a.png")
    res = runner.invoke(app, ["dataset", "mask", str(tmp_path), "--model", "u2net", "--models-dir", str(models)])
    assert res.exit_code == 0, res.output
    assert "(model)" in res.output
    got = np.asarray(Image.open(tmp_path / "a.mask.png"))
    # float32 in the model vs float64 here: a value on a rounding edge may land one step lower.
    assert np.abs(got.astype(int) - _reference_mask(rgb).astype(int)).max() <= 1


def test_picture_size_is_kept_and_bright_subject_is_white(tmp_path, models):
    im = Image.new("RGB", (96, 64), (0, 0, 0))
    im.paste((255, 255, 255), (0, 0, 48, 64))  # left half bright
    im.save(tmp_path / "b.png")
    res = runner.invoke(app, ["dataset", "mask", str(tmp_path), "--model", str(models / "rembg" / "u2net.onnx")])
    assert res.exit_code == 0, res.output
    mask = np.asarray(Image.open(tmp_path / "b.mask.png"))
    assert mask.shape == (64, 96)
    assert mask[:, :40].min() >= 250 and mask[:, 56:].max() <= 5


def test_alpha_is_used_as_the_mask_and_existing_masks_are_kept(tmp_path):
    rgba = np.zeros((40, 40, 4), dtype=np.uint8)
    rgba[..., 3] = np.arange(40, dtype=np.uint8)[None, :] * 6
    Image.fromarray(rgba, "RGBA").save(tmp_path / "c.png")
    res = runner.invoke(app, ["dataset", "mask", str(tmp_path)])  # no model needed for alpha
    assert res.exit_code == 0, res.output
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "c.mask.png")), rgba[..., 3])
    Image.new("L", (40, 40), 7).save(tmp_path / "c.mask.png")
    res = runner.invoke(app, ["dataset", "mask", str(tmp_path)])
    assert res.exit_code == 0 and "(kept)" in res.output
    assert np.asarray(Image.open(tmp_path / "c.mask.png")).max() == 7
    res = runner.invoke(app, ["dataset", "mask", str(tmp_path), "--overwrite"])
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "c.mask.png")), rgba[..., 3])


def test_no_model_for_an_opaque_picture_is_an_error_naming_it(tmp_path):
    Image.new("RGB", (40, 40)).save(tmp_path / "d.png")
    res = runner.invoke(app, ["dataset", "mask", str(tmp_path)])
    assert res.exit_code == 1 and f"{tmp_path / 'd.png'}: has no transparency" in res.output
    assert not (tmp_path / "d.mask.png").exists()


def test_a_tagger_is_not_a_segmentation_model(tmp_path):
    folder = write_tiny_wd14(tmp_path / "wd")
    with pytest.raises(ModelFileError, match=r"model.onnx: takes \['batch', 4, 4, 3\].*not a u2net-style"):
        load_segmentation_model(folder / "model.onnx")


def test_unknown_model_name_says_where_it_looked(tmp_path, models):
    Image.new("RGB", (40, 40)).save(tmp_path / "d.png")
    res = runner.invoke(app, ["dataset", "mask", str(tmp_path), "--model", "isnet-anime", "--models-dir", str(models)])
    assert res.exit_code == 2 and "isnet-anime" in res.output and str(models / "rembg") in res.output


def test_a_zip_is_masked_in_the_folder_it_is_extracted_to(tmp_path):
    import zipfile

    rgba = np.zeros((40, 40, 4), dtype=np.uint8)
    rgba[..., 3] = np.arange(40, dtype=np.uint8)[:, None] * 6
    Image.fromarray(rgba, "RGBA").save(tmp_path / "c.png")
    archive = tmp_path / "set.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(tmp_path / "c.png", "10_sticker/c.png")
        z.writestr("../evil.png", b"x")
    res = runner.invoke(app, ["dataset", "mask", str(archive), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "../evil.png" in res.output and not (tmp_path / "x").exists()  # the ingest's checks
    with zipfile.ZipFile(archive, "w") as z:
        z.write(tmp_path / "c.png", "10_sticker/c.png")
    res = runner.invoke(app, ["dataset", "mask", str(archive)])
    assert res.exit_code == 2 and "--out" in res.output
    res = runner.invoke(app, ["dataset", "mask", str(archive), "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "10_sticker" / "c.mask.png")), rgba[..., 3])
    assert (tmp_path / "out" / "10_sticker" / "c.png").is_file()
    with zipfile.ZipFile(archive) as z:
        assert z.namelist() == ["10_sticker/c.png"]  # the archive itself is never changed
