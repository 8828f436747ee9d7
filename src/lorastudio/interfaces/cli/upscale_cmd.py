"""`lorastudio upscale IMG... --upscaler NAME --scale S`: A1111's Extras upscaling from the command line.

Registered by app.py (`upscale_cmd.register(app)`); importing this module imports no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def upscale(
        images: list[Path] = typer.Argument(..., help="Pictures to upscale"),
        upscaler: str = typer.Option("Lanczos", "--upscaler", help="Lanczos, Nearest, or a model file's name "
                                     "from models/ESRGAN, RealESRGAN, SwinIR, DAT, HAT, upscale_models"),
        scale: float = typer.Option(2.0, "--scale", help="Resize by this factor"),
        models_dir: Optional[Path] = typer.Option(None, "--models-dir", help="A1111/Forge `models` folder"),
        outdir: Optional[Path] = typer.Option(None, "--outdir", help="Output root [outputs]"),
        tile: int = typer.Option(192, "--tile", help="Tile size in pixels for model upscalers (0: whole picture)"),
        device: Optional[str] = typer.Option(None, help="auto | cpu | cuda | mps"),
        allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow .pth/.pt (loaded with weights_only=True)"),
    ):
        """Upscale pictures with a model upscaler (tiled) or Lanczos; writes outputs/extras-images/DATE/."""
        from lorastudio.core.errors import LorastudioError
        from lorastudio.interfaces.cli.app import _fail, _settings

        try:
            settings = _settings(models_dir, outdir, device=device, allow_pickle=allow_pickle or None)
            for path in _upscale_all(images, upscaler, scale, settings, tile):
                typer.echo(str(path))
        except LorastudioError as exc:
            _fail(exc)


def _upscale_all(images: list[Path], upscaler: str, scale: float, settings, tile: int) -> list[Path]:
    from PIL import Image, UnidentifiedImageError

    from lorastudio.core.errors import InvalidParameter
    from lorastudio.core.paths import ModelsRoot
    from lorastudio.generation.engine import pick_device
    from lorastudio.generation.upscalers import upscaler_function
    from lorastudio.generation.outputs import dated_folder

    if not 1 <= scale <= 8:
        raise InvalidParameter("--scale", scale, "between 1 and 8")
    pictures = []
    for p in images:  # every input is checked before anything is computed or written
        try:
            with Image.open(p) as im:
                pictures.append((p, im.copy()))  # the upscaler keeps transparency
        except (OSError, UnidentifiedImageError) as exc:
            raise InvalidParameter("IMG", str(p), f"not a readable picture: {exc}") from None
    run = upscaler_function(upscaler, ModelsRoot.at(settings.models_dir).root, allow_pickle=settings.allow_pickle,
                            device=pick_device(settings.device), tile=tile)
    folder = dated_folder(settings.outdir, "extras")
    info = f"Postprocess upscale by: {scale:g}, Postprocess upscaler: {upscaler}"
    written = []
    for p, im in pictures:
        out = run(im, round(im.width * scale), round(im.height * scale))
        written.append(_save(out, folder, p.stem, info))
    return written


def _save(image, folder: Path, stem: str, info: str) -> Path:
    from PIL.PngImagePlugin import PngInfo

    from lorastudio.core.atomic import atomic_path

    from lorastudio.generation.outputs import next_number

    folder.mkdir(parents=True, exist_ok=True)
    n = next_number(folder)
    while (path := folder / f"{n:05d}-{stem}.png").exists():  # never overwrite
        n += 1
    meta = PngInfo()
    meta.add_text("parameters", info)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=meta)
    return path
