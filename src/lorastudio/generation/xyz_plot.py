"""A1111's X/Y/Z plot: one generation per cell through the engine's own txt2img / img2img call, then
the grid(s) with their legends and infotexts as A1111 draws and writes them.

Each cell is exactly the request a user would make by hand with that cell's values (same engine
call, same seed), so a cell of the grid reproduces from its own infotext. The axes, their values
and their legends are `core.xyz_axes`; the drawing is `generation.grids`.

Where A1111 differs and we do not follow:
- a cell that fails stops the plot with the error (A1111 prints it and leaves a black tile), and
  every cell's settings are checked before the first one runs;
- cells of different sizes (the Size axis) each get a tile of the largest size, top-left aligned
  (A1111 tiles at the first cell's size and then fails to place the legend).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from lorastudio.core.errors import InvalidParameter
from lorastudio.core.params import SEED_MAX, GenerationParams, build_model, validate_params
from lorastudio.core.xyz_axes import (
    Mode,
    PlotAxis,
    XyzPlotOptions,
    add_infotext_fields,
    apply_axis,
    cell_order,
    grid_fields,
    plot_axes,
    vary_seed,
)
from lorastudio.generation.grids import annotate_grid, tile_grid

MAX_CELLS = 1000
MAX_GRID_PIXELS = 200_000_000  # A1111's img_max_size_mp default (200 MP)


@dataclass
class XyzCell:
    ix: int
    iy: int
    iz: int
    params: GenerationParams
    image: Any = None  # PIL image: the first of the cell's batch, as A1111 keeps
    infotext: str = ""
    seed: int = 0
    path: Path | None = None


@dataclass
class XyzPlotResult:
    """`images` in A1111's order: the grid, the grid of each Z value (include_sub_grids), then every
    cell (include_lone_images); `infotexts` and `seeds` go with them."""

    images: list = field(default_factory=list)
    infotexts: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    cells: list[XyzCell] = field(default_factory=list)  # X fastest, then Y, then Z
    grid_paths: list[Path] = field(default_factory=list)
    interrupted: bool = False


def plan_cells(params: GenerationParams | dict, options: XyzPlotOptions | dict, mode: Mode = "txt2img",
               draw_seed: Callable[[], int] | None = None) -> tuple[tuple[PlotAxis, PlotAxis, PlotAxis], list[XyzCell]]:
    """Every cell's settings, checked, in A1111's run order; -1 seeds drawn once (unless
    no_fixed_seeds), as A1111's fix_seed does for the whole plot."""
    params = validate_params(params)
    options = build_model(XyzPlotOptions, options)
    draw = draw_seed or (lambda: secrets.randbelow(SEED_MAX + 1))
    axes = plot_axes(options, mode)
    base = params.model_dump()
    if not options.no_fixed_seeds:
        for key in ("seed", "subseed"):
            if base[key] == -1:
                base[key] = draw()
        axes = tuple(PlotAxis(pa.axis, [draw() if v == -1 else v for v in pa.values], pa.text)
                     if pa.axis.label in ("Seed", "Var. seed") else pa for pa in axes)
    sizes = tuple(len(pa.values) for pa in axes)
    n = sizes[0] * sizes[1] * sizes[2]
    if n > MAX_CELLS:
        raise InvalidParameter("x_values", f"{sizes[0]}x{sizes[1]}x{sizes[2]}", f"{n} cells (at most {MAX_CELLS})")
    vary = (options.vary_seeds_x, options.vary_seeds_y, options.vary_seeds_z)
    cells = []
    for ix, iy, iz in cell_order(tuple(pa.axis.cost for pa in axes), sizes):
        values = dict(base)
        values["styles"] = list(values["styles"])
        for name, pa, i in zip("xyz", axes, (ix, iy, iz)):
            apply_axis(values, pa.axis, pa.values[i], pa.values, field=f"{name}_values")
        if any(vary) and values["seed"] != -1:
            values["seed"] = vary_seed(values["seed"], ix, iy, iz, sizes, vary) % (SEED_MAX + 1)
        try:
            cell_params = validate_params(values)
        except InvalidParameter as exc:
            where = ", ".join(lab for lab in (axes[0].labels[ix], axes[1].labels[iy], axes[2].labels[iz]) if lab)
            raise InvalidParameter(exc.field, exc.value, f"{exc.why} (in the X/Y/Z cell {where})") from None
        cells.append(XyzCell(ix, iy, iz, cell_params))
    pixels = sum(c.params.width * c.params.height for c in cells)
    if pixels > MAX_GRID_PIXELS:
        raise InvalidParameter("x_values", f"{n} cells", f"the grid would be {pixels / 1e6:.0f} MP "
                               f"(at most {MAX_GRID_PIXELS // 1_000_000} MP)")
    return axes, cells


def run_xyz_plot(engine, params: GenerationParams | dict, options: XyzPlotOptions | dict, *, mode: Mode = "txt2img",
                 init_images: list | None = None, mask=None, img2img_options=None, controlnet: list | None = None,
                 on_cell_progress: Callable[[int, int, int], None] | None = None,
                 on_cell_done: Callable[[int, Any], bool] | None = None,
                 cells_dir: Path | None = None, grids_dir: Path | None = None) -> XyzPlotResult:
    """Run the plot. `on_cell_progress(cell number, step, steps)`; `on_cell_done(cell number, image)`
    returns False to stop (what is done is kept, as A1111's interrupt). Cells are saved to
    `cells_dir` and grids to `grids_dir` when given, each with its infotext."""
    from lorastudio.generation.outputs import save_image

    options = build_model(XyzPlotOptions, options)
    axes, cells = plan_cells(params, options, mode)
    confirm_names(engine, cells)
    extra = {"controlnet": controlnet} if controlnet else {}
    result = XyzPlotResult()
    for n, cell in enumerate(cells):
        progress = None
        if on_cell_progress is not None:
            def progress(_batch, step, steps, n=n):
                on_cell_progress(n, step, steps)
        if mode == "img2img":
            out = engine.img2img(cell.params, init_images or [], mask, options=img2img_options, save=False,
                                 on_progress=progress, **extra)
        else:
            out = engine.txt2img(cell.params, save=False, on_progress=progress, **extra)
        if out.images:
            first = out.images[0]
            cell.image, cell.infotext, cell.seed = first.image, first.infotext, first.seed
            if cells_dir is not None:
                cell.path = save_image(cell.image, cells_dir, cell.seed, cell.infotext)
        # /skip ends one cell and /interrupt the plot (on_cell_done tells which); alone, a stopped cell ends it
        stop = (not on_cell_done(n, cell.image)) if on_cell_done is not None else out.interrupted
        if stop:
            result.interrupted = True
            break
    nx, ny, nz = (len(pa.values) for pa in axes)
    by_index = {(c.ix, c.iy, c.iz): c for c in cells}
    ordered = [by_index[(ix, iy, iz)] for iz in range(nz) for iy in range(ny) for ix in range(nx)]
    result.cells = ordered
    done = [c for c in ordered if c.image is not None]
    if not done:
        return result
    _assemble(result, axes, ordered, options, grids_dir, save_image)
    return result


def confirm_names(engine, cells: list[XyzCell]) -> None:
    """Every sampler, checkpoint and VAE the cells name exists, before the first cell runs (A1111
    confirms its sampler and checkpoint axes the same way)."""
    from lorastudio.core.samplers import resolve_sampler

    seen: set = set()
    for c in cells:
        p = c.params
        for key, check in ((("sampler", p.sampler, p.scheduler), lambda: resolve_sampler(p.sampler, p.scheduler)),
                           (("model", p.model), lambda: p.model and engine.catalog.find_checkpoint(p.model)),
                           (("vae", p.vae), lambda: p.vae and engine.catalog.find_vae(p.vae))):
            if key not in seen:
                seen.add(key)
                check()


def _assemble(result: XyzPlotResult, axes, ordered: list[XyzCell], options: XyzPlotOptions, grids_dir,
              save_image) -> None:
    x, y, z = axes
    nx, ny, nz = len(x.values), len(y.values), len(z.values)
    done = [c for c in ordered if c.image is not None]
    w = max(c.image.width for c in done)
    h = max(c.image.height for c in done)
    blank = Image.new("RGB", (w, h), "black")  # an interrupted plot's cells not run (A1111: an empty image)

    def tile(c: XyzCell):
        if c.image is None:
            return blank
        if c.image.size == (w, h):
            return c.image
        canvas = Image.new("RGB", (w, h), "black")
        canvas.paste(c.image, (0, 0))
        return canvas

    fixed = not options.no_fixed_seeds
    sub_grids, sub_infos, sub_seeds = [], [], []
    for iz in range(nz):
        part = ordered[iz * nx * ny:(iz + 1) * nx * ny]
        grid = tile_grid([tile(c) for c in part], rows=ny)
        if options.draw_legend:
            grid = annotate_grid(grid, w, h, x.labels, y.labels, options.margin_size)
        sub_grids.append(grid)
        first = part[0] if part[0].image is not None else done[0]
        sub_infos.append(add_infotext_fields(first.infotext, grid_fields(axes, with_z=False, fixed_seeds=fixed)))
        sub_seeds.append(first.seed)
    main = tile_grid(sub_grids, rows=1)
    if options.draw_legend:
        gw, gh = max(g.width for g in sub_grids), max(g.height for g in sub_grids)
        main = annotate_grid(main, gw, gh, z.labels, [""])
    first = ordered[0] if ordered[0].image is not None else done[0]
    main_info = add_infotext_fields(first.infotext, grid_fields(axes, with_z=True, fixed_seeds=fixed))
    result.images, result.infotexts, result.seeds = [main], [main_info], [first.seed]
    if grids_dir is not None:
        result.grid_paths.append(save_image(main, grids_dir, first.seed, main_info))
    if options.include_sub_grids:
        result.images += sub_grids
        result.infotexts += sub_infos
        result.seeds += sub_seeds
        if grids_dir is not None and nz > 1:
            result.grid_paths += [save_image(g, grids_dir, s, i) for g, s, i in zip(sub_grids, sub_seeds, sub_infos)]
    if options.include_lone_images:
        result.images += [c.image for c in done]
        result.infotexts += [c.infotext for c in done]
        result.seeds += [c.seed for c in done]
