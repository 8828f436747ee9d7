"""`lorastudio xyz`, in-process: options from XyzPlotOptions, the grid and every cell saved with its infotext."""

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from lorastudio.core.infotext import parse_infotext
from lorastudio.core.png_text import read_infotext
from lorastudio.interfaces.cli.app import app

ARGS = ["--steps", "2", "--width", "32", "--height", "32", "--seed", "5", "--sampler", "Euler", "--device", "cpu"]


def pixels(path):
    return np.asarray(Image.open(path).convert("RGB"))


def test_xyz_command_saves_grid_and_cells(sd1_models_root, tmp_path):
    runner = CliRunner()
    help_text = runner.invoke(app, ["xyz", "--help"], env={"COLUMNS": "200"}).output
    for flag in ("--x-type", "--x-values", "--y-type", "--z-values", "--no-draw-legend", "--vary-seeds-x",
                 "--keep-random-seeds", "--margin-size", "--cfg", "--sampler", "--models-dir"):
        assert flag in help_text, flag

    out = tmp_path / "out"
    common = ["--models-dir", sd1_models_root, *ARGS]
    r = runner.invoke(app, [str(a) for a in ["xyz", "a red circle", *common, "--outdir", out, "--x-type", "CFG Scale",
                                             "--x-values", "3, 5", "--no-draw-legend"]])
    assert r.exit_code == 0, r.output
    (grid,) = out.glob("txt2img-grids/*/*.png")
    cells = sorted(out.glob("txt2img-images/*/*.png"))
    assert len(cells) == 2 and str(grid) in r.output and all(str(c) in r.output for c in cells)
    assert Image.open(grid).size == (64, 32)
    info = parse_infotext(read_infotext(grid))
    assert (info["X Type"], info["X Values"], info["CFG scale"]) == ("CFG Scale", "3, 5", "3")
    # the second cell is what `lorastudio generate --cfg 5` makes with the same settings
    plain = tmp_path / "plain"
    r = runner.invoke(app, [str(a) for a in ["generate", "a red circle", *common, "--cfg", "5", "--outdir", plain]])
    assert r.exit_code == 0, r.output
    (single,) = plain.glob("txt2img-images/*/*.png")
    assert np.array_equal(pixels(cells[1]), pixels(single)) and read_infotext(cells[1]) == read_infotext(single)
    assert np.array_equal(pixels(grid)[:, 32:], pixels(single))

    bad = runner.invoke(app, [str(a) for a in ["xyz", "a cat", *common, "--outdir", out, "--x-type", "Eta",
                                               "--x-values", "0, 1"]])
    assert bad.exit_code == 2 and "x_type" in bad.output and "not supported" in bad.output
