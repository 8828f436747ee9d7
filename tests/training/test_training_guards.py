"""Bugs a review and a fault probe found in training, each with the test that caught it:
the background colour reaching the latent cache, a finished version protected from --resume,
no extracted zip left in the temporary folder, one picture-size rule for `dataset check` and
`train`, the hint naming a real flag, config_version checked, the LoRA's prediction type."""

import re
import tempfile
import zipfile

import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from lorastudio.core.errors import DatasetError, InvalidParameter

BASE = dict(trigger="DeltamonStamp", base="tiny", steps=1, resolution=[64], rank=4, lr=5e-3, seed=3)


@pytest.fixture(scope="module")
def world(tmp_path_factory, training_world):
    return training_world(tmp_path_factory.mktemp("guards"), images=2, size=64)  # RGBA stickers on a transparent background


def cfg(world, **kw):
    return {**BASE, "images": world / "data", "models_dir": world / "models", "projects_dir": world / "projects", **kw}


def cached_latents(result) -> dict[str, object]:
    folder = result.version_dir / "cache" / "latents"
    return {p.name: load_file(str(p))["latent"] for p in sorted(folder.glob("*.safetensors"))}


def test_background_colour_reaches_the_latent_cache(world):
    from lorastudio.training.api import train

    white = cached_latents(train(cfg(world, project="bg-white")))
    black = cached_latents(train(cfg(world, project="bg-black", background="#000000")))
    assert len(white) == len(black) == 2
    # The colour is part of the cache key, and the pictures were composited onto it (before: a
    # "#rrggbb" setting was checked, then white was used).
    assert not set(white) & set(black)
    for (_, w), (_, b) in zip(sorted(white.items()), sorted(black.items())):
        assert (w - b).abs().max() > 1e-2


def test_training_config_parses_the_colour_once():
    from lorastudio.training.config import training_config

    c = training_config(dict(images="x", trigger="T", base="b", background="#102030"))
    assert c.background == (16, 32, 48)
    assert training_config(dict(images="x", trigger="T", base="b", background=[1, 2, 3])).background == (1, 2, 3)
    with pytest.raises(InvalidParameter) as err:
        training_config(dict(images="x", trigger="T", base="b", background="#12345"))
    assert err.value.field == "background"


def test_resume_on_a_finished_version_is_refused_and_keeps_its_lora(world):
    from lorastudio.training.api import train

    done = train(cfg(world, project="fin"))
    before = done.lora_path.read_bytes()
    with pytest.raises(InvalidParameter) as err:
        train(cfg(world, project="fin", resume=True, steps=2))
    msg = str(err.value)
    assert "v1" in msg and "finished" in msg and "without --resume" in msg
    assert done.lora_path.read_bytes() == before
    assert [p.name for p in (done.version_dir.parent).iterdir()] == ["v1"]  # nothing new either


def _zip_of(folder, out, extra: dict[str, bytes] | None = None):
    with zipfile.ZipFile(out, "w") as zf:
        for p in sorted(folder.iterdir()):
            zf.write(p, p.name)
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return out


def test_a_failed_train_on_a_zip_leaves_no_extracted_pictures(world, tmp_path, monkeypatch):
    from lorastudio.training.api import train

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    # 1. the dataset check fails (a corrupt picture)
    bad = _zip_of(world / "data", tmp_path / "bad.zip", {"broken.png": b"\x89PNG\r\n\x1a\n" + b"\0" * 40})
    with pytest.raises(DatasetError):
        train(cfg(world, images=bad, project="leak"))
    assert list(tmp.iterdir()) == []
    # 2. the check passes, then setting up the version fails (it exists and --resume is not given)
    good = _zip_of(world / "data", tmp_path / "good.zip")
    (world / "projects" / "leak2" / "versions" / "v1").mkdir(parents=True)
    (world / "projects" / "leak2" / "versions" / "v1" / "something").write_text("x")
    with pytest.raises(InvalidParameter):
        train(cfg(world, images=good, project="leak2", version="v1"))
    assert list(tmp.iterdir()) == []


def test_dataset_check_and_train_apply_one_size_rule(tmp_path):
    from lorastudio.interfaces.cli.app import app
    from lorastudio.training.config import training_config
    from lorastudio.training.dataset.checks import check_dataset
    from lorastudio.training.dataset.fixtures import draw_sticker_dataset
    from lorastudio.training.dataset.ingest import open_source

    draw_sticker_dataset(tmp_path / "small", n=2, size=32)
    out = CliRunner().invoke(app, ["dataset", "check", str(tmp_path / "small"), "--resolution", "32"])
    # Before: "the shortest side must be at least 64 px", while `train --resolution 32` trained them.
    assert out.exit_code == 0, out.output
    assert "Result: OK" in out.output
    tc = training_config(dict(images=tmp_path / "small", trigger="sks", base="b", resolution=[32]))
    with open_source(tmp_path / "small") as src:
        assert check_dataset(src, tc.dataset_config(32)).ok


def test_the_dataset_check_hint_names_a_flag_train_has(tmp_path):
    import typer

    from lorastudio.interfaces.cli.app import app
    from lorastudio.training.dataset.fixtures import draw_sticker_dataset

    draw_sticker_dataset(tmp_path / "ds", n=2, size=64)
    (tmp_path / "ds" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    out = CliRunner().invoke(app, ["dataset", "check", str(tmp_path / "ds"), "--resolution", "64"])
    assert out.exit_code == 1
    flags = re.findall(r"\((--[\w-]+)\)", out.output)
    assert flags, out.output
    train_cmd = typer.main.get_command(app).commands["train"]
    train_flags = {o for p in train_cmd.params for o in p.opts}
    assert set(flags) <= train_flags, (flags, sorted(train_flags))


def test_a_config_from_a_newer_lorastudio_is_refused(tmp_path):
    from lorastudio.training.config import CONFIG_VERSION, load_toml, training_config

    toml = tmp_path / "run.toml"
    toml.write_text(f'config_version = {CONFIG_VERSION + 1}\nimages = "x"\ntrigger = "T"\nbase = "b"\n')
    with pytest.raises(InvalidParameter) as err:
        load_toml(toml)
    assert err.value.field == "config_version" and "newer lorastudio" in str(err.value)
    with pytest.raises(InvalidParameter) as err:
        training_config(dict(images="x", trigger="T", base="b", config_version=0))
    assert err.value.field == "config_version"
    assert training_config(dict(images="x", trigger="T", base="b", config_version=1)).config_version == 1


def test_launch_reads_its_config_through_the_same_check(tmp_path):
    from lorastudio.training.launch import main

    cfg_file = tmp_path / "c.json"
    cfg_file.write_text('{"config_version": 99, "images": "x", "trigger": "T", "base": "b"}')
    with pytest.raises(InvalidParameter) as err:
        main([str(cfg_file)])
    assert err.value.field == "config_version"


def test_prediction_type_comes_from_the_family():
    from lorastudio.models.families.flux import FluxFamily
    from lorastudio.models.families.sd1 import SD1Family
    from lorastudio.models.families.sdxl import SDXLFamily
    from lorastudio.training.config import training_config
    from lorastudio.training.export import kohya_metadata

    config = training_config(dict(images="x", trigger="T", base="b", rank=4, alpha=4.0, lr=1e-4, te_lr=1e-4))

    def md(family):
        return kohya_metadata(config=config, family=family, output_name="n", rank=4, alpha=4.0, base_name="b",
                              base_sha256=None, started=0.0, finished=1.0, steps=1, epochs=1, num_images=1,
                              resolution=64, captions=["T"], mixed_precision="no")

    assert md(SD1Family())["modelspec.prediction_type"] == "epsilon"
    assert md(SDXLFamily())["modelspec.prediction_type"] == "epsilon"
    # FLUX is flow matching (velocity), neither epsilon nor v: the optional key is left out.
    assert "modelspec.prediction_type" not in md(FluxFamily())
