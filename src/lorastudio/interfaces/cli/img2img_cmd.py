"""`lorastudio img2img`: img2img and inpainting with the A1111 conventions.

Registered by app.py (`img2img_cmd.register(app)`); importing this module imports no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from lorastudio.interfaces.cli.quiet import library_output, verbose_option


def register(app: typer.Typer) -> None:
    @app.command()
    def img2img(
        prompt: str = typer.Argument("", help="Prompt, with A1111 syntax: (word:1.2), [word], BREAK, <lora:name:0.8>"),
        init: Path = typer.Option(..., "--init", help="Init image (PNG, JPEG, WebP...)"),
        mask: Optional[Path] = typer.Option(None, "--mask", help="Inpainting mask: white (or opaque) = repaint"),
        denoising_strength: Optional[float] = typer.Option(None, "--denoising-strength", "--strength",
                                                           help="0 keeps the image, 1 replaces it [0.75]"),
        resize_mode: int = typer.Option(0, "--resize-mode",
                                        help="0 just resize, 1 crop and resize, 2 resize and fill"),
        mask_blur: int = typer.Option(4, "--mask-blur", help="Mask blur in pixels"),
        inpainting_fill: int = typer.Option(
            1, "--inpainting-fill", help="Masked content: 0 fill, 1 original, 2 latent noise, 3 latent nothing"),
        invert_mask: bool = typer.Option(False, "--invert-mask", help="Repaint what the mask does not cover"),
        negative: str = typer.Option("", "--negative", "-n", help="Negative prompt"),
        model: Optional[str] = typer.Option(None, "--model", "-m", help="Checkpoint name, title, short hash or path"),
        models_dir: Optional[Path] = typer.Option(None, "--models-dir", help="A1111/Forge `models` folder "
                                                  "(default: ./models or $LORASTUDIO_MODELS_DIR)"),
        steps: Optional[int] = typer.Option(None, help="Sampling steps [20]; as A1111, strength x steps + 1 run"),
        cfg: Optional[float] = typer.Option(None, "--cfg", help="CFG scale [7]"),
        sampler: Optional[str] = typer.Option(None, help="A1111 sampler name, e.g. 'DPM++ 2M' or 'DPM++ 2M Karras'"),
        scheduler: Optional[str] = typer.Option(None,
                                                help="Schedule type: Automatic, Karras, Exponential, SGM Uniform"),
        seed: Optional[int] = typer.Option(None, help="Seed; -1 draws a random one [-1]"),
        width: Optional[int] = typer.Option(None, help="Width, a multiple of 8 [the init image's, rounded]"),
        height: Optional[int] = typer.Option(None, help="Height, a multiple of 8 [the init image's, rounded]"),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Images per batch"),
        batch_count: Optional[int] = typer.Option(None, "--batch-count", help="Number of batches"),
        clip_skip: Optional[int] = typer.Option(None, "--clip-skip", help="CLIP skip (A1111 numbering: 1 = none)"),
        guidance: Optional[float] = typer.Option(None, "--guidance", help="FLUX distilled guidance [3.5]"),
        vae: Optional[str] = typer.Option(None, "--vae", help="VAE from models/VAE"),
        outdir: Optional[Path] = typer.Option(None, "--outdir", help="Output root [outputs]"),
        from_png: Optional[Path] = typer.Option(None, "--from-png",
                                                help="Take the parameters from this PNG's infotext"),
        device: Optional[str] = typer.Option(None, help="auto | cpu | cuda | mps"),
        allow_pickle: bool = typer.Option(False, "--allow-pickle",
                                          help="Allow .ckpt/.pt (loaded with weights_only=True)"),
        verbose: bool = verbose_option(),
    ):
        """img2img (inpainting with --mask); PNGs go to outputs/img2img-images and carry their parameters."""
        from lorastudio.core.errors import LorastudioError
        from lorastudio.interfaces.cli.app import _fail, _fail_if_out_of_memory, _params_from_png, _settings
        from lorastudio.interfaces.cli.memory import GENERATE_HINT

        try:
            from lorastudio.core.params import validate_img2img_options, validate_params

            init_image = _open_image(init, "--init")
            mask_image = _open_image(mask, "--mask") if mask is not None else None
            values: dict = {}
            if from_png is not None:
                values.update(_params_from_png(from_png))
            if prompt:
                values["prompt"] = prompt
            # Unless given, the size is the init image's (rounded down to a multiple of 8).
            values.setdefault("width", max(8, init_image.width // 8 * 8))
            values.setdefault("height", max(8, init_image.height // 8 * 8))
            given = {"negative_prompt": negative or None, "model": model, "steps": steps, "cfg_scale": cfg,
                     "sampler": sampler, "scheduler": scheduler, "seed": seed, "width": width, "height": height,
                     "batch_size": batch_size, "batch_count": batch_count, "clip_skip": clip_skip,
                     "guidance": guidance, "vae": vae, "denoising_strength": denoising_strength}
            values.update({k: v for k, v in given.items() if v is not None})
            params = validate_params(values)
            options = validate_img2img_options({"resize_mode": resize_mode, "mask_blur_x": mask_blur,
                                                "mask_blur_y": mask_blur, "inpainting_fill": inpainting_fill,
                                                "inpainting_mask_invert": invert_mask})
            settings = _settings(models_dir, outdir, device=device, allow_pickle=allow_pickle or None)

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


def _open_image(path: Path, option: str):
    from PIL import Image, UnidentifiedImageError

    from lorastudio.core.errors import InvalidParameter

    try:
        with Image.open(path) as img:
            img.load()
            return img.copy()
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise InvalidParameter(option, str(path), f"not a readable image ({exc})") from None
