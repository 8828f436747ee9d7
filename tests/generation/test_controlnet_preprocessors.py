"""Preprocessors and the extension's infotext for ControlNet units."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from lorastudio.core.errors import InvalidParameter
from lorastudio.generation.controlnet_units import (
    ControlNetUnit,
    parse_unit,
    pixel_perfect_resolution,
    serialize_unit,
    ResizeMode,
)
from lorastudio.generation.preprocessors import preprocessors, run_preprocessor


def photo(h=48, w=80, seed=0):
    rng = np.random.RandomState(seed)
    base = np.zeros((h, w, 3), np.uint8)
    cv2.circle(base, (w // 2, h // 2), min(h, w) // 3, (200, 90, 30), -1)
    return np.clip(base.astype(int) + rng.randint(0, 20, base.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("low,high", [(100, 200), (30, 90)])
def test_canny_is_opencvs_own(low, high):
    im = photo()
    got = run_preprocessor("canny", im, resolution=48, threshold_a=low, threshold_b=high)  # short side kept
    want = cv2.Canny(im, low, high)
    assert got.shape == (48, 80, 3) and (got[..., 0] == want).all() and (got[..., 2] == want).all()
    assert want.any()


def test_canny_resizes_the_short_side_to_the_resolution_first():
    im = photo()
    got = run_preprocessor("canny", im, resolution=96, threshold_a=100, threshold_b=200)
    want = cv2.Canny(cv2.resize(im, (160, 96), interpolation=cv2.INTER_CUBIC), 100, 200)
    assert (got[..., 1] == want).all()


def test_invert_threshold_tile():
    im = photo()
    assert (run_preprocessor("invert", im, resolution=48, threshold_a=-1, threshold_b=-1) == 255 - im).all()
    thr = run_preprocessor("threshold", im, resolution=48, threshold_a=60, threshold_b=-1)
    assert set(np.unique(thr)) <= {0, 255} and (thr[..., 0] == np.where(im.mean(axis=2) > 60, 255, 0)).all()
    assert run_preprocessor("tile_resample", im, resolution=48, threshold_a=2.0, threshold_b=-1).shape == (24, 40, 3)


def test_weight_needing_preprocessors_name_the_file(tmp_path):
    with pytest.raises(InvalidParameter) as e:
        run_preprocessor("depth_midas", photo(), resolution=64, threshold_a=-1, threshold_b=-1, models_root=tmp_path)
    assert "dpt_hybrid-midas-501f0c75.pt" in str(e.value) and str(tmp_path / "ControlNetPreprocessor") in str(e.value)
    with pytest.raises(InvalidParameter) as e:
        run_preprocessor("no_such_thing", photo(), resolution=64, threshold_a=-1, threshold_b=-1)
    assert "canny" in str(e.value)
    assert {"none", "canny", "invert", "tile_resample", "threshold", "inpaint_only", "openpose"} <= set(preprocessors())


def test_pixel_perfect_is_the_extensions_rule():
    # 300x200 (h x w) picture into 512x768: crop-and-resize takes the larger factor, fill the smaller
    assert pixel_perfect_resolution((300, 200), 768, 512, ResizeMode.CROP_AND_RESIZE) == round(max(512 / 300, 768 / 200) * 200)
    assert pixel_perfect_resolution((300, 200), 768, 512, ResizeMode.RESIZE_AND_FILL) == round(min(512 / 300, 768 / 200) * 200)


def test_infotext_as_the_extension_writes_and_reads_it():
    u = ControlNetUnit(module="canny", model="control_v11p_sd15_canny", weight=1, control_mode=2,
                       resize_mode=0).with_slider_defaults()
    text = serialize_unit(u, "control_v11p_sd15_canny [d14c016b]")
    assert text == ("Module: canny, Model: control_v11p_sd15_canny [d14c016b], Weight: 1.0, Resize Mode: Just Resize, "
                    "Low Vram: False, Processor Res: 512, Threshold A: 100.0, Threshold B: 200.0, Guidance Start: 0.0, "
                    "Guidance End: 1.0, Pixel Perfect: False, Control Mode: ControlNet is more important, "
                    "Hr Option: Both, Save Detected Map: True")
    back = parse_unit(text)
    assert back.model == "control_v11p_sd15_canny [d14c016b]" and back.control_mode.value == "ControlNet is more important"
    assert (back.weight, back.processor_res, back.threshold_b, back.resize_mode) == (1.0, 512, 200.0, ResizeMode.JUST_RESIZE)


def test_bad_unit_fields_are_named():
    with pytest.raises(ValueError, match="guidance_start"):
        ControlNetUnit(guidance_start=0.8, guidance_end=0.2)
    with pytest.raises(ValueError, match="resize_mode"):
        ControlNetUnit(resize_mode="Stretch")
