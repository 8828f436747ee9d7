"""`lorastudio train --caption auto`: captions from a local tagger become part of the version."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from lorastudio.interfaces.cli.app import app
from lorastudio.testing.tiny_interrogators import write_tiny_wd14

runner = CliRunner()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from lorastudio.testing.tiny_sd import save_sd1_single_file, tiny_sd1_pipeline

    root = tmp_path_factory.mktemp("autocap")
    (root / "models" / "Stable-diffusion").mkdir(parents=True)
    save_sd1_single_file(tiny_sd1_pipeline(0), root / "models" / "Stable-diffusion" / "tiny.safetensors")
    write_tiny_wd14(root / "models" / "interrogators" / "wd-tiny", size=4)
    data = root / "data"
    data.mkdir()
    Image.new("RGB", (64, 64), (255, 0, 0)).save(data / "red.png")
    Image.new("RGB", (64, 64), (0, 0, 255)).save(data / "blue.png")
    (data / "blue.txt").write_text("my caption of blue\n", encoding="utf-8")
    return root


def test_train_caption_auto_writes_into_the_version_copy_only(world):
    res = runner.invoke(app, ["train", "--images", str(world / "data"), "--trigger", "Zed", "--base", "tiny",
                              "--steps", "1", "--resolution", "64", "--rank", "2",
                              "--models-dir", str(world / "models"), "--projects-dir", str(world / "projects"),
                              "--caption", "auto", "--tagger", "wd-tiny", "--no-report"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (world / "data").iterdir()) == ["blue.png", "blue.txt", "red.png"]
    version = world / "projects" / "Zed" / "versions" / "v1"
    red = (version / "dataset" / "red.txt").read_text(encoding="utf-8")
    tags = [t.strip() for t in red.split(",")]
    # The tiny tagger reads the red channel: "px_y_x_r" tags (and the character row at element 5).
    assert tags[0] == "Zed" and "px 3 3 r" in tags and not any(t.endswith(" b") for t in tags[1:])
    # A caption the user wrote is kept as written (the trigger is put first, as for any caption).
    assert (version / "dataset" / "blue.txt").read_text(encoding="utf-8") == "Zed, my caption of blue"
    config = json.loads((version / "config.json").read_text())
    assert config["caption"] == "auto" and config["caption_options"]["tagger"] == "wd-tiny"
    assert config["caption_options"]["wd14"]["general_threshold"] == 0.35
    assert config["images"] == str(world / "data")
    from safetensors import safe_open

    with safe_open(str(version / "Zed.safetensors"), "pt") as f:
        freq = json.loads(f.metadata()["ss_tag_frequency"])
    assert freq["Zed"]["px 3 3 r"] == 1 and freq["Zed"]["my caption of blue"] == 1  # kohya's tag counts


def test_caption_auto_without_a_model_is_refused(world):
    res = runner.invoke(app, ["train", "--images", str(world / "data"), "--trigger", "Zed", "--base", "tiny",
                              "--steps", "1", "--models-dir", str(world / "models"), "--caption", "auto"])
    assert res.exit_code == 2 and "needs a tagger and/or a captioner" in res.output


def test_caption_auto_with_a_broken_tagger_fails_before_training(world):
    broken = world / "models" / "interrogators" / "no-csv"
    write_tiny_wd14(broken, with_csv=False)
    res = runner.invoke(app, ["train", "--images", str(world / "data"), "--trigger", "Zed", "--base", "tiny",
                              "--steps", "1", "--resolution", "64", "--models-dir", str(world / "models"),
                              "--projects-dir", str(world / "projects2"), "--caption", "auto", "--tagger", "no-csv"])
    assert res.exit_code == 2 and f"{broken / 'selected_tags.csv'}: missing" in res.output
    assert not (world / "projects2").exists()


def test_masked_loss_run_keeps_the_mask_beside_its_picture(world, tmp_path):
    data = tmp_path / "masked"
    data.mkdir()
    Image.new("RGB", (64, 64), (255, 0, 0)).save(data / "red.png")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    mask.save(data / "red.mask.png")
    res = runner.invoke(app, ["train", "--images", str(data), "--trigger", "Mask", "--base", "tiny",
                              "--steps", "1", "--resolution", "64", "--rank", "2", "--masked-loss", "--no-report",
                              "--models-dir", str(world / "models"), "--projects-dir", str(tmp_path / "p")])
    assert res.exit_code == 0, res.output
    dataset = tmp_path / "p" / "Mask" / "versions" / "v1" / "dataset"
    assert sorted(p.name for p in dataset.iterdir()) == ["red.mask.png", "red.png", "red.txt"]
    assert (dataset / "red.mask.png").read_bytes() == (data / "red.mask.png").read_bytes()
    assert (dataset / "red.txt").read_text(encoding="utf-8") == "Mask"
