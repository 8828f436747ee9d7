"""Regularisation ("class") pictures drawn by the base model itself, as DreamBooth makes them.

Trained on its own outputs for prompts without the trigger word, a LoRA is pulled back towards
what the base already did for those prompts (prior preservation): the concept is learned
from the training pictures, the rest of the base is left alone. Each picture is written with
its caption (`NNNN.png` + `NNNN.txt`, the PNG carries the A1111 infotext); pictures already
there are kept, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lorastudio.core.atomic import atomic_write_text
from lorastudio.core.png_text import write_png_with_infotext


def write_class_images(engine, prompts: Sequence[str], folder: Path, *, seed: int = 0, **params) -> list[Path]:
    """Draw one picture per prompt with `engine` (seed + index) into `folder`; returns the PNG paths.

    `params` are generation parameters (width, height, steps, cfg_scale, sampler, model…)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for i, prompt in enumerate(prompts):
        png = folder / f"{i:04d}.png"
        if not (png.exists() and png.with_suffix(".txt").exists()):
            image = engine.txt2img({**params, "prompt": prompt, "seed": seed + i, "batch_size": 1},
                                   save=False).images[0]
            write_png_with_infotext(image.image, png, image.infotext)  # atomic
            # the caption last: a picture without its caption is redrawn next time
            atomic_write_text(png.with_suffix(".txt"), prompt)
        paths.append(png)
    return paths
