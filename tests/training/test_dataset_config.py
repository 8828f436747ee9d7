"""DatasetConfig: defaults, normalisation, and errors that name the field."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from lorastudio.core.errors import InvalidParameter
from lorastudio.training.dataset.config import DatasetConfig, dataset_config


def test_defaults():
    c = DatasetConfig(trigger_word="DeltamonStamp")
    assert c.resolutions == (512,) and c.bucket_step == 64 and c.min_size == 64
    assert c.background == (255, 255, 255) and c.caption_extensions == (".txt", ".caption")
    assert c.max_pixels == 64_000_000 and c.max_unzipped_bytes == 2 * 1024**3
    assert not c.allow_upscale and not c.use_alpha_mask and c.repeats == 1


def test_normalisation():
    c = DatasetConfig(trigger_word="Delta(mon)", resolutions=[768, 512, 768], background="#FF8000",
                      caption_extensions=["TXT", ".Caption"], class_word="  cute   sticker ")
    assert c.trigger_word == "Delta(mon)"  # stored as typed, escaping happens in captions
    assert c.resolutions == (512, 768)
    assert c.background == (255, 128, 0)
    assert c.caption_extensions == (".txt", ".caption")
    assert c.class_word == "cute sticker"
    assert DatasetConfig(trigger_word="x", resolutions=1024).resolutions == (1024,)


@pytest.mark.parametrize("kwargs,field", [
    ({"trigger_word": ""}, "trigger_word"),
    ({"trigger_word": "a, b"}, "trigger_word"),
    ({"trigger_word": " padded"}, "trigger_word"),
    ({"resolutions": [500]}, "resolution"),
    ({"resolutions": []}, "resolutions"),
    ({"resolutions": [8192]}, "resolutions"),
    ({"bucket_step": 60}, "bucket_step"),
    ({"min_aspect": 2.0}, "min_aspect"),
    ({"max_aspect": 0.5}, "max_aspect"),
    ({"background": "#12"}, "background"),
    ({"background": [0, 0, 300]}, "background"),
    ({"caption_extensions": [".png"]}, "caption_extensions"),
    ({"caption_dropout": 1.5}, "caption_dropout"),
    ({"keep_tokens": -1}, "keep_tokens"),
    ({"min_size": 32}, "bucket_step"),
    ({"repeats": 0}, "repeats"),
    ({"shuffle": True}, "shuffle"),  # extra="forbid": a typo is not silently ignored
])
def test_invalid_values_name_the_field(kwargs, field):
    data = {"trigger_word": "DeltamonStamp", **kwargs}
    with pytest.raises(ValidationError) as err:
        DatasetConfig(**data)
    assert field in str(err.value)
    with pytest.raises(InvalidParameter) as err2:
        dataset_config(data)
    assert field in str(err2.value)


def test_frozen():
    c = DatasetConfig(trigger_word="x")
    with pytest.raises(ValidationError):
        c.trigger_word = "y"
