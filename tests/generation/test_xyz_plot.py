"""The X/Y/Z plot engine on the tiny SD 1.x checkpoint: each cell is the single generation with that
cell's settings, the grid is A1111's layout, the infotexts are A1111's."""

import numpy as np
import pytest

from lorastudio.core.errors import InvalidParameter, NotFound
from lorastudio.core.infotext import parse_infotext
from lorastudio.core.png_text import read_infotext
from lorastudio.generation.xyz_plot import plan_cells, run_xyz_plot

BASE = dict(prompt="a red circle", width=32, height=32, steps=2, sampler="Euler", cfg_scale=5.0, seed=11)


def arr(img):
    return np.asarray(img.convert("RGB"))


def test_cells_equal_single_generations_and_grid_layout(engine, tmp_path):
    plot = dict(x_type="Seed", x_values="11, 12", y_type="Prompt S/R", y_values="red, blue",
                include_lone_images=True, include_sub_grids=True)
    result = run_xyz_plot(engine, BASE, plot, cells_dir=tmp_path / "cells", grids_dir=tmp_path / "grids")
    assert not result.interrupted
    # 1 grid, 1 sub-grid (include_sub_grids keeps it even with one Z value, as A1111), 4 cells
    assert len(result.images) == len(result.infotexts) == len(result.seeds) == 6
    cells = result.cells
    assert [(c.ix, c.iy) for c in cells] == [(0, 0), (1, 0), (0, 1), (1, 1)]
    expected = [("a red circle", 11), ("a red circle", 12), ("a blue circle", 11), ("a blue circle", 12)]
    for cell, (prompt, seed) in zip(cells, expected):
        # Same engine call, same settings: the same pixels, exactly.
        single = engine.txt2img(dict(BASE, prompt=prompt, seed=seed), save=False).images[0]
        assert np.array_equal(arr(cell.image), arr(single.image))
        assert cell.infotext == single.infotext and cell.seed == seed
        assert read_infotext(cell.path) == single.infotext  # each sub-image saved with its own infotext
    assert [arr(im).tobytes() for im in result.images[2:]] == [arr(c.image).tobytes() for c in cells]

    grid = result.images[0]
    # A1111's legend: font (32+32)//25 = 2 px, line spacing 1, labels 3/4 of a tile wide on the left.
    assert grid.width == 2 * 32 + 32 * 3 // 4
    assert 64 < grid.height < 64 + 16
    pad_left, pad_top = grid.width - 64, grid.height - 64
    # the tiles sit unscaled below / right of the legend, X along columns, Y along rows
    assert np.array_equal(arr(grid)[pad_top:pad_top + 32, pad_left + 32:], arr(cells[1].image))
    assert np.array_equal(arr(grid)[pad_top + 32:, pad_left:pad_left + 32], arr(cells[2].image))
    assert (arr(grid)[:pad_top, pad_left:] < 250).any()  # something is written in the top legend
    assert (arr(grid)[pad_top:, :pad_left] < 250).any()  # and on the left

    info = parse_infotext(result.infotexts[0])
    assert info["Script"] == "X/Y/Z plot" and info["X Type"] == "Seed" and info["X Values"] == "11, 12"
    assert info["Y Type"] == "Prompt S/R" and info["Y Values"] == "red, blue"
    assert info["Fixed X Values"] == "11, 12" and "Z Type" not in info
    # the grid's infotext is the first cell's with the script's fields before Version, as A1111 writes it
    assert result.infotexts[0].startswith(cells[0].infotext.split(", Version:")[0] + ", Script: X/Y/Z plot, ")
    assert result.infotexts[0].endswith(cells[0].infotext[cells[0].infotext.index(", Version:"):])
    assert read_infotext(result.grid_paths[0]) == result.infotexts[0]

    # without a legend the grid is the bare tiling
    # (a Z axis of one checkpoint, by its A1111 name: the model reference reaches the engine's loader)
    bare = run_xyz_plot(engine, BASE, dict(plot, y_type="Nothing", draw_legend=False, include_lone_images=False,
                                           include_sub_grids=False, z_type="Checkpoint name",
                                           z_values="tiny-sd1.safetensors"))
    assert len(bare.images) == 1 and bare.images[0].size == (64, 32)
    assert 'Z Type: Checkpoint name, Z Values: tiny-sd1.safetensors, Version:' in bare.infotexts[0]
    assert np.array_equal(arr(bare.images[0])[:, 32:], arr(cells[1].image))


def test_plan_cells_applies_every_axis_kind(engine):
    axes, cells = plan_cells(dict(BASE, prompt="a cat <lora:style:1>", enable_hr=True),
                             dict(x_type="Size", x_values="32x48, 64x32", y_type="LoRA weight", y_values="0-1 [2]",
                                  z_type="Steps", z_values="2-4 (+2)", vary_seeds_x=True))
    assert [(c.params.width, c.params.height) for c in cells][:2] == [(32, 48), (64, 32)]
    assert [c.params.prompt for c in cells if c.iz == 0 and c.ix == 0] == ["a cat <lora:style:0>",
                                                                            "a cat <lora:style:1>"]
    assert sorted({c.params.steps for c in cells}) == [2, 4]
    assert {c.params.seed for c in cells if c.ix == 1} == {12}  # vary seeds along X: seed + ix
    assert axes[0].labels == ["Size: 32x48", "Size: 64x32"] and axes[1].labels == ["LoRA weight: 0.0",
                                                                                     "LoRA weight: 1.0"]
    # a checkpoint axis is the outer loop (a model loads once per value), Z then Y then X otherwise
    _, order = plan_cells(BASE, dict(x_type="Checkpoint name", x_values="a, b", y_type="Steps", y_values="2,3"))
    assert [(c.ix, c.iy) for c in order] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    _, random = plan_cells(dict(BASE, seed=-1), dict(x_type="Steps", x_values="2,3"), draw_seed=lambda: 99)
    assert [c.params.seed for c in random] == [99, 99]  # one seed drawn for the whole plot, as A1111

    with pytest.raises(NotFound):  # names are looked up before the first cell runs
        run_xyz_plot(engine, BASE, dict(x_type="Steps", x_values="2", y_type="Checkpoint name",
                                        y_values="tiny-sd1, no-such-model"))
    with pytest.raises(InvalidParameter) as err:  # checked before anything runs, naming the cell
        plan_cells(BASE, dict(x_type="Steps", x_values="2, 5000"))
    assert err.value.field == "steps" and "Steps: 5000" in str(err.value)
    with pytest.raises(InvalidParameter) as err:
        plan_cells(BASE, dict(x_type="Prompt S/R", x_values="dog, cat"))
    assert err.value.field == "x_values" and "did not find" in str(err.value)
    with pytest.raises(InvalidParameter) as err:
        plan_cells(BASE, dict(x_type="Eta", x_values="0, 1"))
    assert err.value.field == "x_type" and "not supported" in str(err.value)
