"""Upscalers by name, for hires fix and Extras: name -> (picture, width, height) -> picture.

The built-ins (Lanczos, Nearest) and every model file in the A1111 upscaler folders
(generation.model_upscalers); the hires-fix latent modes live with hires fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from lorastudio.generation.model_upscalers import BUILTIN, upscaler_entries, upscaler_function

Upscale = Callable[..., object]  # (PIL picture, width, height) -> PIL picture


def upscaler_names(models_root: Path) -> list[str]:
    return list(BUILTIN) + [e.name for e in upscaler_entries(models_root)]


def get_upscaler(name: str, models_root: Path, *, allow_pickle: bool, device: str = "cpu") -> Upscale:
    return upscaler_function(name, models_root, allow_pickle=allow_pickle, device=device)
