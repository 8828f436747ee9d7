"""Previews as a setting: none when off, periodic ones at an asked size. (The final preview comes
after the saved LoRA at the training resolution: tests/training/test_kohya_module_set.py checks it
on its run.)"""

import pytest
from PIL import Image

BASE = dict(trigger="DeltamonStamp", base="tiny", steps=2, resolution=[32], rank=2, lr=5e-3, seed=3, sample_steps=1,
            install_lora=False, lora_modules="attention")


@pytest.fixture(scope="module")
def world(tmp_path_factory, training_world):
    return training_world(tmp_path_factory.mktemp("previews"), images=2, size=32)


def run(world, **kw):
    from lorastudio.training.api import train

    events = []
    result = train({**BASE, "images": world / "data", "models_dir": world / "models",
                    "projects_dir": world / "projects", **kw}, on_event=events.append)
    return result, events


def test_periodic_previews_at_an_asked_size_and_none_when_off(world):
    result, events = run(world, project="every", sample_every=1, sample_size=48)
    assert [e.step for e in events if e.kind == "sample"] == [1, 2]
    for p in result.samples:
        with Image.open(p) as im:
            assert im.size == (48, 48)

    # samples=False wins over sample_every
    result, events = run(world, project="off", samples=False, sample_every=1)
    assert result.samples == [] and not any(e.kind == "sample" for e in events)
    assert not any((result.version_dir / "samples").glob("*"))
    assert result.lora_path.exists()


def test_sample_every_zero_means_no_previews():
    from lorastudio.training.config import training_config

    ok = dict(images="x", trigger="t", base="b")
    assert training_config({**ok, "sample_every": 0}).previews is False
    assert training_config({**ok, "samples": False}).previews is False
    assert training_config(ok).previews is True and training_config({**ok, "sample_every": 3}).previews is True
