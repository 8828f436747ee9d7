"""X/Y/Z plot values, legends and script_args, against A1111 v1.10's scripts/xyz_grid.py.

The expected values are worked out by hand from A1111's rules (its regexes, `range`, numpy's
`arange` / `linspace`); numpy itself is the reference for the float ranges A1111 hands to it."""

import numpy as np
import pytest

from lorastudio.core.errors import InvalidParameter
from lorastudio.core.infotext import parse_infotext
from lorastudio.core.xyz_axes import (
    add_infotext_fields,
    axes_for,
    find_axis,
    format_axis_value,
    options_from_script_args,
    parse_axis_values,
    reorder_prompt,
    set_lora_weights,
    split_values,
)


def values(label, text, mode="txt2img", **kw):
    return parse_axis_values(find_axis(label, mode), text, **kw)


@pytest.mark.parametrize("text, expected", [
    ("1-5", [1, 2, 3, 4, 5]),
    ("1-10 (+2)", [1, 3, 5, 7, 9]),  # range(1, 11, 2)
    ("10-1 (-3)", [10, 7, 4]),  # range(10, 1 + 1, -3): A1111 adds 1 to the end whatever the sign
    ("1-10 [4]", [1, 4, 7, 10]),
    ("1-2 [4]", [1, 1, 1, 2]),  # int() of linspace(1, 2, 4): truncated, repeats kept
    ("-5 - 5 (+5)", [-5, 0, 5]),
    ("5, 7 ,9, 1-2", [5, 7, 9, 1, 2]),
    ("3", [3]),
])
def test_int_axis_values(text, expected):
    assert values("Steps", text) == expected


@pytest.mark.parametrize("text, expected", [
    ("0.5-1 [3]", [0.5, 0.75, 1.0]),
    ("1-10 (+2)", [1.0, 3.0, 5.0, 7.0, 9.0, 11.0]),  # arange(1, 10 + 2, 2): A1111 passes the end
    ("0-1 (+0.25)", [0.0, 0.25, 0.5, 0.75, 1.0]),
    ("1-2", [1.0, 2.0]),
    ("7, 7.5", [7.0, 7.5]),
])
def test_float_axis_values(text, expected):
    got = values("CFG Scale", text)
    assert got == expected and all(isinstance(v, float) for v in got)


def test_float_ranges_match_numpy_as_a1111_calls_it():
    assert values("Denoising", "0.1-0.9 (+0.2)") == pytest.approx(np.arange(0.1, 0.9 + 0.2, 0.2).tolist(), abs=1e-12)
    assert values("Denoising", "0.2-0.7 [6]") == pytest.approx(np.linspace(0.2, 0.7, 6).tolist(), abs=1e-12)


def test_text_values_quotes_and_errors():
    assert split_values('cat, "dog, big", bird ,  fish') == ["cat", "dog, big", "bird", "fish"]
    assert values("Prompt S/R", 'red, "blue, green"') == ["red", "blue, green"]
    assert values("Prompt order", "a, b") == [("a", "b"), ("b", "a")]
    assert values("Nothing", "whatever") == [0]
    # a dropdown axis reads the dropdown list, unless csv_mode; the text when the list is empty
    assert values("Sampler", "Euler", dropdown=["DPM++ 2M", "Euler a"]) == ["DPM++ 2M", "Euler a"]
    assert values("Sampler", "Euler", dropdown=["DPM++ 2M"], csv_mode=True) == ["Euler"]
    assert values("Sampler", "Euler, DDIM") == ["Euler", "DDIM"]
    for label, text in (("Steps", "a"), ("Steps", "1.5"), ("CFG Scale", "x"), ("Steps", ""), ("Steps", "1-5 (+0)")):
        with pytest.raises(InvalidParameter) as err:
            values(label, text)
        assert err.value.field == "x_values"
    with pytest.raises(InvalidParameter):
        values("Steps", "1-100000")  # a runaway range is refused, not expanded


def test_legends_as_a1111_writes_them():
    cases = [("CFG Scale", 7.0, "CFG Scale: 7.0"), ("Steps", 20, "Steps: 20"), ("Seed", 5, "Seed: 5"),
             ("CFG Scale", 0.1 + 0.2, "CFG Scale: 0.3"), ("Sampler", "Euler a", "Euler a"),
             ("Prompt S/R", "blue", "blue"), ("Checkpoint name", "sub/model.safetensors", "model.safetensors"),
             ("Nothing", 0, ""), ("Prompt order", ("b", "a"), "b, a"), ("Schedule type", "Karras", "Schedule type: Karras"),
             ("Hires upscaler", "Latent", "Hires upscaler: Latent"), ("Size", "512x768", "Size: 512x768")]
    for label, value, text in cases:
        assert format_axis_value(find_axis(label, "txt2img"), value) == text


def test_axis_indices_are_a1111s():
    # The positions in A1111 1.10's dropdown for each tab (its API sends these numbers).
    txt2img = {1: "Seed", 2: "Var. seed", 3: "Var. strength", 4: "Steps", 5: "Hires steps", 6: "CFG Scale",
               7: "Prompt S/R", 8: "Prompt order", 9: "Sampler", 10: "Hires sampler", 11: "Checkpoint name",
               17: "Schedule type", 25: "Clip skip", 26: "Denoising", 29: "Hires upscaler", 30: "VAE", 31: "Styles",
               42: "Size"}
    img2img = {4: "Steps", 5: "CFG Scale", 7: "Prompt S/R", 9: "Sampler", 10: "Checkpoint name", 16: "Schedule type",
               24: "Clip skip", 25: "Denoising", 29: "VAE", 41: "Size"}
    for mode, table in (("txt2img", txt2img), ("img2img", img2img)):
        for i, label in table.items():
            assert find_axis(i, mode).label == label
    assert [a.label for a in axes_for("txt2img")][:2] == ["Nothing", "Seed"]
    with pytest.raises(InvalidParameter):
        find_axis("Hires upscaler", "img2img")  # a txt2img-only axis
    with pytest.raises(InvalidParameter):
        find_axis(99, "txt2img")


def test_script_args_in_a1111_order():
    opts = options_from_script_args([4, "1-3", [], 7, "cat,dog", [], 0, "", [], False, True, True, True,
                                     True, False, False, 4, False], "txt2img")
    assert (opts.x_type, opts.x_values, opts.y_type, opts.y_values, opts.z_type) == ("Steps", "1-3", "Prompt S/R",
                                                                                   "cat,dog", "Nothing")
    assert (opts.draw_legend, opts.include_lone_images, opts.include_sub_grids, opts.no_fixed_seeds) == (
        False, True, True, True)
    assert (opts.vary_seeds_x, opts.vary_seeds_y, opts.margin_size, opts.csv_mode) == (True, False, 4, False)
    short = options_from_script_args([9, "", ["Euler", "DDIM"]], "txt2img")  # the rest at A1111's defaults
    assert short.x_type == "Sampler" and short.x_values_dropdown == ["Euler", "DDIM"] and short.draw_legend
    with pytest.raises(InvalidParameter) as err:
        options_from_script_args([1, "1", [], 0, "", [], 0, "", [], True, False, False, False, False, False, False,
                                  600], "txt2img")
    assert err.value.field == "script_args[16]"
    with pytest.raises(InvalidParameter) as err:
        options_from_script_args([26 + 20], "img2img")
    assert err.value.field == "script_args[0]"


def test_prompt_order_lora_weight_and_grid_fields():
    assert reorder_prompt("a cat, a dog, a bird", ("a bird", "a cat", "a dog")) == "a bird, a cat, a dog"
    assert set_lora_weights("x <lora:a:1> <lora:b:0.5:0.2> <lora:c> <lora:d:dyn=4>", 0.3) == (
        "x <lora:a:0.3> <lora:b:0.3:0.3> <lora:c:0.3> <lora:d:0.3:dyn=4>")
    with pytest.raises(InvalidParameter):
        set_lora_weights("no tag", 0.5)
    text = "a cat\nNegative prompt: ugly\nSteps: 2, Seed: 1, Version: v1.10.1"
    out = add_infotext_fields(text, {"Script": "X/Y/Z plot", "X Type": "Seed", "X Values": "1, 2"})
    assert out == ('a cat\nNegative prompt: ugly\nSteps: 2, Seed: 1, Script: X/Y/Z plot, X Type: Seed, '
                   'X Values: "1, 2", Version: v1.10.1')
    assert parse_infotext(out)["X Values"] == "1, 2"
