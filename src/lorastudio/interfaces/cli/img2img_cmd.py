"""`lorastudio img2img`: img2img and inpainting with the A1111 conventions.

Registered by app.py (`img2img_cmd.register(app)`); importing this module imports no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from lorastudio.interfaces.cli.options_from_model import GroupedCommand, with_model_options
from lorastudio.interfaces.cli.quiet import library_output, verbose_option


def _img2img_option_fields():
    from lorastudio.core.params import Img2ImgOptions
    from lorastudio.interfaces.cli.app import generation_option_fields
    from lorastudio.interfaces.cli.options_from_model import model_fields_for_cli

    size = "the init image's, rounded down to a multiple of 8"
    given, studio = generation_option_fields(shown_defaults={"width": size, "height": size})
    return given, ("inpaint", model_fields_for_cli(Img2ImgOptions, group="img2img and inpainting")), studio


def register(app: typer.Typer) -> None:
    @app.command(cls=GroupedCommand)
    @with_model_options(*_img2img_option_fields())
    def img2img(
        prompt: str = typer.Argument("", help="Prompt, with A1111 syntax: (word:1.2), [word], BREAK, <lora:name:0.8>"),
        init: Path = typer.Option(..., "--init", help="Init image (PNG, JPEG, WebP...)"),
        mask: Optional[Path] = typer.Option(None, "--mask", help="Inpainting mask: white (or opaque) = repaint"),
        given: dict = None,
        inpaint: dict = None,
        studio: dict = None,
        from_png: Optional[Path] = typer.Option(None, "--from-png",
                                                help="Take the parameters from this PNG's infotext"),
        verbose: bool = verbose_option(),
    ):
        """img2img (inpainting with --mask); PNGs go to outputs/img2img-images and carry their parameters."""
        from lorastudio.core.errors import LorastudioError
        from lorastudio.interfaces.cli.app import _fail, _fail_if_out_of_memory, _generation_values, _settings
        from lorastudio.interfaces.cli.memory import GENERATE_HINT

        try:
            from lorastudio.core.params import validate_img2img_options, validate_params

            init_image = _open_image(init, "--init")
            mask_image = _open_image(mask, "--mask") if mask is not None else None
            values = _generation_values(prompt, from_png, given)
            # Unless given, the size is the init image's (rounded down to a multiple of 8).
            values.setdefault("width", max(8, init_image.width // 8 * 8))
            values.setdefault("height", max(8, init_image.height // 8 * 8))
            params = validate_params(values)
            options = validate_img2img_options({**_options_from_png(from_png), **inpaint})
            settings = _settings(**studio)

            from lorastudio.core.params import img2img_steps
            from lorastudio.generation.engine import GenerationEngine
            from lorastudio.interfaces.cli.progress import step_progress

            total = img2img_steps(params.steps, params.denoising_strength) * params.batch_count
            with library_output(verbose):
                engine = GenerationEngine(settings)
                engine.load(params.model, params.vae)  # loading happens before the bar starts
                with step_progress(total) as advance:
                    result = engine.img2img(params, [init_image], mask_image, options=options, on_progress=advance)
        except LorastudioError as exc:
            _fail(exc)
        except (MemoryError, RuntimeError) as exc:
            _fail_if_out_of_memory(exc, GENERATE_HINT)
        for im in result.images:
            typer.echo(f"{im.path}  seed={im.seed}")
        if result.interrupted:
            typer.echo("interrupted")


def _options_from_png(path: Optional[Path]) -> dict:
    """The inpainting settings of --from-png's infotext (the flags given win)."""
    if path is None:
        return {}
    from lorastudio.core.infotext_params import img2img_options_from_infotext
    from lorastudio.core.png_text import read_infotext

    return img2img_options_from_infotext(read_infotext(path) or "")


def _open_image(path: Path, option: str):
    from PIL import Image, UnidentifiedImageError

    from lorastudio.core.errors import InvalidParameter

    try:
        with Image.open(path) as img:
            img.load()
            return img.copy()
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise InvalidParameter(option, str(path), f"not a readable image ({exc})") from None
