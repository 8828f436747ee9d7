"""The bundled base model: listed out of the box, loaded through the normal path, trainable."""

import json

import numpy as np
import pytest

from lorastudio.models.catalog import BUNDLED_DIR

BUNDLED = BUNDLED_DIR / "lorastudio-shapes-v1.safetensors"


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from lorastudio.core.settings import StudioSettings
    from lorastudio.generation.engine import GenerationEngine

    root = tmp_path_factory.mktemp("bundled")
    return GenerationEngine(StudioSettings(models_dir=root / "models", outdir=root / "out", device="cpu"))


def test_listed_and_loaded_like_any_checkpoint(engine):
    entries = engine.catalog.checkpoints()
    assert [e.path for e in entries] == [BUNDLED]
    assert BUNDLED.stat().st_size <= 25 * 1024 * 1024
    title = engine.catalog.title(entries[0])
    assert title.startswith("lorastudio-shapes-v1.safetensors [") and len(title.split("[")[1]) == 11
    model = engine.load()
    assert model.family.name == "sd1"


def test_draws_the_colour_it_is_asked_for_more_often_than_chance(engine):
    """A weak but real quality floor (chance is 10%); bench/base_quality.py measures it properly."""
    from lorastudio.testing.shapes import classify_image

    colours = ["red", "yellow", "white", "orange"]
    hits = 0
    for i, c in enumerate(colours):
        im = engine.txt2img(dict(prompt=f"a {c} circle on a blue background", width=32, height=32, steps=12,
                                 cfg_scale=5.0, seed=10 + i), save=False).images[0].image
        hits += classify_image(im)["colour"] == c
    assert hits >= 2


def test_a_few_training_steps_on_it_are_deterministic(tmp_path):
    from safetensors.torch import load_file

    from lorastudio.training.api import train
    from lorastudio.training.dataset.fixtures import draw_sticker_dataset

    draw_sticker_dataset(tmp_path / "data", n=4, size=64)
    cfg = dict(images=tmp_path / "data", trigger="DeltamonStamp", base=BUNDLED.name, models_dir=tmp_path / "m",
               projects_dir=tmp_path / "p", steps=3, batch_size=2, rank=4, resolution=[32], seed=5)
    a = train({**cfg, "project": "a"})
    b = train({**cfg, "project": "b"})
    sa, sb = load_file(str(a.lora_path)), load_file(str(b.lora_path))
    assert sa.keys() == sb.keys() and all(np.array_equal(sa[k].numpy(), sb[k].numpy()) for k in sa)
    assert json.loads(a.config_path.read_text())["resolution"] == [32]
