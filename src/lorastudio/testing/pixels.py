"""Comparing two pictures that two different computations made of the same thing.

CPU kernels (MKL, oneDNN, ATen's AVX-512 / AVX2 / default code) promise bitwise-equal results
only for the same call with the same tensor shapes on the same machine. Two paths to one picture
(a batch of four vs a batch of one, a single file vs a diffusers folder, our call vs a plain
diffusers call, AVX-512 vs the default kernels) round differently, and a pixel near a level
boundary lands one level up or down. Measured on the tiny test models (SD 1.x, SDXL, FLUX.1,
32x32, 2-3 steps): at most 1 level of 255 in one channel of one pixel, batch vs single and
AVX-512 vs ATEN_CPU_CAPABILITY=default. The tests allow 2 levels, the figure the README promises.
"""

from __future__ import annotations

import numpy as np

MAX_LEVELS = 2  # of 255, per channel, per pixel


def as_levels(image) -> np.ndarray:
    """A PIL image, a uint8 array or a float array in [0, 1] as 8-bit levels (float64)."""
    if hasattr(image, "convert"):
        image = np.asarray(image.convert("RGB"))
    if hasattr(image, "detach"):
        image = image.detach().cpu().numpy()
    image = np.asarray(image)
    if image.dtype.kind == "f":
        return image.astype(np.float64) * 255.0
    return image.astype(np.float64)


def max_level_difference(a, b) -> float:
    a, b = as_levels(a), as_levels(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max())


def assert_same_picture(a, b, max_levels: float = MAX_LEVELS) -> None:
    """Equal within `max_levels` of 255 everywhere: what two correct paths promise (see above)."""
    diff = max_level_difference(a, b)
    assert diff <= max_levels, f"pictures differ by {diff:.3g} levels of 255 (at most {max_levels} allowed)"
