"""`lorastudio xyz`: A1111's X/Y/Z plot from the command line (txt2img).

The plot's options are `core.xyz_axes.XyzPlotOptions` (the API's script_args by name), the rest are
`lorastudio generate`'s. Registered by app.py; importing this module imports no torch.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Optional

import typer

from lorastudio.interfaces.cli.options_from_model import GroupedCommand, with_model_options
from lorastudio.interfaces.cli.quiet import library_output, verbose_option


def _xyz_option_fields():
    from lorastudio.core.xyz_axes import XyzPlotOptions
    from lorastudio.interfaces.cli.app import generation_option_fields
    from lorastudio.interfaces.cli.options_from_model import model_fields_for_cli

    native = "the checkpoint's native size"
    given, studio = generation_option_fields(exclude=("denoising_strength",),
                                             shown_defaults={"width": native, "height": native})
    # The command always saves every cell (as A1111 saves its samples): include_lone_images, which
    # says whether the API returns them, has no flag here.
    fields = model_fields_for_cli(XyzPlotOptions, exclude=("include_lone_images",), group="X/Y/Z plot")
    return ("plot", fields), given, studio


def register(app: typer.Typer) -> None:
    @app.command(cls=GroupedCommand)
    @with_model_options(*_xyz_option_fields())
    def xyz(
        prompt: str = typer.Argument("", help="Prompt, with A1111 syntax: (word:1.2), [word], BREAK, <lora:name:0.8>"),
        plot: dict = None,
        given: dict = None,
        studio: dict = None,
        from_png: Optional[Path] = typer.Option(None, "--from-png", help="Start from the parameters of this PNG"),
        verbose: bool = verbose_option(),
    ):
        """A1111's X/Y/Z plot: one image per combination of the axis values, in a labelled grid.

        e.g. lorastudio xyz "a cat" --x-type Steps --x-values "10-30 (+10)" --y-type "CFG Scale" --y-values "5, 7".
        The grid goes to outputs/txt2img-grids, every cell (with its own infotext) to
        outputs/txt2img-images."""
        from lorastudio.core.errors import LorastudioError
        from lorastudio.interfaces.cli.app import _fail, _fail_if_out_of_memory, _generation_values, _settings
        from lorastudio.interfaces.cli.memory import GENERATE_HINT

        try:
            from lorastudio.core.params import build_model, validate_params
            from lorastudio.core.xyz_axes import XyzPlotOptions
            from lorastudio.generation.xyz_plot import plan_cells

            values = _generation_values(prompt, from_png, given)
            options = build_model(XyzPlotOptions, plot)
            settings = _settings(**studio)
            sized = "width" in values and "height" in values
            if sized:
                plan_cells(validate_params(values), options)  # every cell checked before a model loads

            from lorastudio.generation.engine import GenerationEngine
            from lorastudio.generation.xyz_plot import run_xyz_plot
            from lorastudio.interfaces.cli.progress import step_progress

            with library_output(verbose):
                engine = GenerationEngine(settings)
                loaded = engine.load(values.get("model"), values.get("vae"))
                if not sized:
                    side = loaded.family.native_resolution(loaded.pipe)
                    values.setdefault("width", side)
                    values.setdefault("height", side)
                params = validate_params(values)
                _, cells = plan_cells(params, options)
                day = _dt.date.today().isoformat()
                offsets = [0]  # steps done before each cell, in the order the cells run
                for c in cells:
                    offsets.append(offsets[-1] + c.params.steps * c.params.batch_count)

                with step_progress(offsets[-1]) as advance:
                    def on_step(cell: int, step: int, _steps: int) -> None:
                        advance(0, offsets[cell] + step, 1)

                    result = run_xyz_plot(engine, params, options, on_cell_progress=on_step,
                                          cells_dir=Path(settings.outdir) / "txt2img-images" / day,
                                          grids_dir=Path(settings.outdir) / "txt2img-grids" / day)
        except LorastudioError as exc:
            _fail(exc)
        except (MemoryError, RuntimeError) as exc:
            _fail_if_out_of_memory(exc, GENERATE_HINT)
        for path in result.grid_paths:
            typer.echo(f"{path}  grid")
        for cell in result.cells:
            if cell.path is not None:
                typer.echo(f"{cell.path}  seed={cell.seed}")
        if result.interrupted:
            typer.echo("interrupted")
