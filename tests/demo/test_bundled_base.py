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


def test_a_short_training_run_learns_the_sticker_character(tmp_path):
    """The efficacy bench, small: if a training change stops learning, this fails.

    bench/lora_efficacy.py (300 steps + regularisation pictures) moves the concept score from
    about 0.27 to 0.91; the score's spread over seeds without the LoRA is about 0.01-0.03, so a
    0.15 rise after 150 steps is far outside noise, and a run that learns nothing (score
    unchanged) cannot pass."""
    from PIL import Image

    from lorastudio.core.settings import StudioSettings
    from lorastudio.evaluation.scores import concept_score
    from lorastudio.generation.engine import GenerationEngine
    from lorastudio.training.api import train
    from lorastudio.training.dataset.fixtures import draw_sticker_dataset

    draw_sticker_dataset(tmp_path / "data", n=12, trigger="DeltamonStamp", seed=0, size=128)
    models = tmp_path / "models"
    (models / "Lora").mkdir(parents=True)
    result = train(dict(images=tmp_path / "data", trigger="DeltamonStamp", base=BUNDLED.name, models_dir=models,
                        projects_dir=tmp_path / "p", steps=150, batch_size=4, rank=8, alpha=8.0, lr=2e-3,
                        resolution=[32], seed=0))
    (models / "Lora" / "deltamon.safetensors").write_bytes(result.lora_path.read_bytes())
    engine = GenerationEngine(StudioSettings(models_dir=models, outdir=tmp_path / "out", device="cpu"))
    refs = [Image.open(p) for p in sorted((tmp_path / "data").glob("*.png"))]

    def score(weight: float) -> float:
        images = [engine.txt2img(dict(prompt=f"{p} <lora:deltamon:{weight:g}>", width=32, height=32, steps=20,
                                      cfg_scale=5.0, sampler="DPM++ 2M", seed=1000 + i), save=False).images[0].image
                  for i, p in enumerate(["DeltamonStamp", "DeltamonStamp, waving", "DeltamonStamp, sticker"])]
        return concept_score(images, refs)

    without, with_lora = score(0.0), score(1.0)
    assert with_lora - without >= 0.15, (without, with_lora)
