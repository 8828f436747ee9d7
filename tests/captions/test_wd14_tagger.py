"""WD14 tagger: preprocessing checked through an identity-like ONNX model, thresholds, tag text."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lorastudio.core.errors import ModelFileError
from lorastudio.testing.tiny_interrogators import write_tiny_wd14
from lorastudio.training.dataset.taggers.wd14 import Tag, WD14Options, load_wd14, select_tags


@pytest.fixture(scope="module")
def tagger(tmp_path_factory):
    return load_wd14(write_tiny_wd14(tmp_path_factory.mktemp("wd14") / "tiny-wd14", size=4))


def _model_input(tagger, image) -> np.ndarray:
    # The tiny model outputs input element k / 255 as "probability" k, in NHWC order.
    return tagger.probabilities(image).reshape(4, 4, 3) * 255.0


def test_wide_picture_is_padded_top_and_bottom_on_white_and_given_as_bgr(tagger):
    rgb = np.arange(4 * 2 * 3, dtype=np.uint8).reshape(2, 4, 3) * 10  # 4 wide, 2 high, all values distinct
    got = _model_input(tagger, Image.fromarray(rgb, "RGB"))
    want = np.full((4, 4, 3), 255.0)
    want[1:3] = rgb[:, :, ::-1]  # centred: one white row above, one below; channels B, G, R
    # x/255 then *255 in float32 is exact only up to rounding of the division.
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_odd_padding_puts_the_extra_column_on_the_right(tagger):
    rgb = np.array([[[10, 20, 30]], [[40, 50, 60]], [[70, 80, 90]], [[100, 110, 120]]], dtype=np.uint8)  # 1x4
    got = _model_input(tagger, Image.fromarray(rgb, "RGB"))
    want = np.full((4, 4, 3), 255.0)
    want[:, 1] = rgb[:, 0, ::-1]  # (4-1)//2 = 1 column on the left, 2 on the right
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_transparent_pixels_become_white(tagger):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., :3] = (0, 0, 200)
    rgba[..., 3] = 255
    rgba[0, 0, 3] = 0
    got = _model_input(tagger, Image.fromarray(rgba, "RGBA"))
    np.testing.assert_allclose(got[0, 0], [255, 255, 255], atol=1e-4)
    np.testing.assert_allclose(got[3, 3], [200, 0, 0], atol=1e-4)  # BGR


def test_larger_picture_is_resized_to_the_input_size_keeping_a_flat_colour(tagger):
    got = _model_input(tagger, Image.new("RGB", (64, 64), (10, 20, 30)))
    # Any interpolation keeps a flat colour flat; bicubic's overshoot has nothing to overshoot.
    np.testing.assert_allclose(got, np.broadcast_to([30, 20, 10], (4, 4, 3)), atol=0.01)


def test_resize_matches_pad_then_bicubic(tagger):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (8, 16, 3), dtype=np.uint8)  # 16 wide, 8 high
    padded = np.full((16, 16, 3), 255, dtype=np.uint8)
    padded[4:12] = rgb
    want = np.asarray(Image.fromarray(padded).resize((4, 4), Image.Resampling.BICUBIC), dtype=np.float32)[:, :, ::-1]
    np.testing.assert_allclose(_model_input(tagger, Image.fromarray(rgb)), want, atol=1e-3)


def _picture_with(values: dict[int, int]) -> Image.Image:
    """A 4x4 picture whose NHWC element k (B,G,R order) is values.get(k, 0)."""
    bgr = np.zeros(48, dtype=np.uint8)
    for k, v in values.items():
        bgr[k] = v
    return Image.fromarray(bgr.reshape(4, 4, 3)[:, :, ::-1].copy(), "RGB")


def test_thresholds_ratings_and_tag_text(tagger):
    # k 0-3: ratings, 4-7: characters "character_k_(series)", then "px_y_x_c" general tags.
    image = _picture_with({0: 250, 1: 30, 4: 230, 5: 200, 9: 128, 10: 127, 20: 255})
    tags = [t.text for t in tagger.tag(image, WD14Options(general_threshold=0.5, character_threshold=0.85))]
    # 230/255 = 0.90 passes the character threshold, 200/255 = 0.78 does not; 128/255 passes 0.5, 127 not.
    assert tags == [r"character 4 \(series\)", "px 1 2 r", "px 0 3 b"]  # k=20: y1 x2 R; k=9: y0 x3 B
    with_rating = [t.text for t in tagger.tag(image, WD14Options(general_threshold=0.5, keep_rating=True))]
    assert with_rating[0] == "general"
    assert "sensitive" not in with_rating


def test_raw_names_when_underscores_and_escaping_are_off(tagger):
    image = _picture_with({4: 255})
    tags = [t.text for t in tagger.tag(image, WD14Options(replace_underscores=False, escape_brackets=False))]
    assert tags == ["character_4_(series)"]


def test_select_tags_lists_max_tags_and_kaomoji():
    tags = [Tag("rating_x", 9), Tag("blue_hair", 0), Tag("^_^", 0), Tag("smile", 0), Tag("hat_(object)", 0)]
    probs = np.array([0.9, 0.8, 0.7, 0.6, 0.5], dtype=np.float32)
    all_tags = [t.text for t in select_tags(probs, tags, WD14Options())]
    assert all_tags == ["blue hair", "^_^", "smile", r"hat \(object\)"]
    assert [t.text for t in select_tags(probs, tags, WD14Options(max_tags=2))] == ["blue hair", "^_^"]
    assert [t.text for t in select_tags(probs, tags, WD14Options(blacklist=("blue hair", "hat_(object)")))] == \
        ["^_^", "smile"]
    assert [t.text for t in select_tags(probs, tags, WD14Options(whitelist=("smile", "blue_hair")))] == \
        ["blue hair", "smile"]


def test_folder_without_model(tmp_path):
    (tmp_path / "selected_tags.csv").write_text("tag_id,name,category,count\n1,a,0,1\n")
    with pytest.raises(ModelFileError, match="no model.onnx"):
        load_wd14(tmp_path)


def test_missing_csv_is_named(tmp_path):
    folder = write_tiny_wd14(tmp_path / "m", with_csv=False)
    with pytest.raises(ModelFileError, match="selected_tags.csv.*missing"):
        load_wd14(folder)


def test_model_for_another_task_is_refused(tmp_path):
    folder = write_tiny_wd14(tmp_path / "m", input_shape=["batch", 3, 4, 4])  # NCHW: not WD14's layout
    with pytest.raises(ModelFileError, match=r"model.onnx.*not a WD14 tagger's \[batch, size, size, 3\]"):
        load_wd14(folder)


def test_csv_of_another_model_is_refused(tmp_path):
    folder = write_tiny_wd14(tmp_path / "m")
    (folder / "selected_tags.csv").write_text("tag_id,name,category,count\n1,a,0,1\n2,b,0,1\n")
    with pytest.raises(ModelFileError, match="lists 2 tags"):
        load_wd14(folder)


def test_not_an_onnx_file(tmp_path):
    folder = write_tiny_wd14(tmp_path / "m")
    (folder / "model.onnx").write_bytes(b"this is not a protobuf")
    with pytest.raises(ModelFileError, match="model.onnx: cannot be loaded by onnxruntime"):
        load_wd14(folder)
