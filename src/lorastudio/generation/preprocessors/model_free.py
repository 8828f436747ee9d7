"""Preprocessors without weights, as the A1111 ControlNet extension runs them.

Each takes an RGB uint8 picture, first resized so its short side is `resolution` (cubic when
enlarging, area when shrinking, as the extension does), and returns an RGB uint8 map.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lorastudio.generation.preprocessors.picture_steps import gray_to_rgb, resize_short_side


def none(image, resolution, a, b):
    return image


def canny(image, resolution, low, high):
    import cv2

    return gray_to_rgb(cv2.Canny(resize_short_side(image, resolution), int(low), int(high)))


def invert(image, resolution, a, b):
    return 255 - resize_short_side(image, resolution)


def threshold(image, resolution, level, b):
    # Scribble by threshold: pixels brighter than `level` become white lines on black.
    gray = resize_short_side(image, resolution).astype(np.float32).mean(axis=2)
    return gray_to_rgb(np.where(gray > level, 255, 0).astype(np.uint8))


def tile_resample(image, resolution, down_sampling_rate, b):
    # The tile model wants a blurry copy: shrink by the rate (area), the pipeline enlarges it again.
    import cv2

    if down_sampling_rate < 1.1:
        return image
    h, w = image.shape[:2]
    size = (max(1, int(w / down_sampling_rate)), max(1, int(h / down_sampling_rate)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def inpaint_only(image, resolution, a, b):
    # The masked area is marked afterwards (controlnet_units), where the mask is known.
    return image


@dataclass(frozen=True)
class Slider:
    label: str
    value: float
    minimum: float
    maximum: float


_RES = Slider("Resolution", 512, 64, 2048)
# name -> (function, (resolution, threshold_a, threshold_b) sliders), defaults as the extension's.
MODEL_FREE = {
    "none": (none, (None, None, None)),
    "canny": (canny, (_RES, Slider("Canny Low Threshold", 100, 1, 255), Slider("Canny High Threshold", 200, 1, 255))),
    "invert": (invert, (_RES, None, None)),
    "threshold": (threshold, (_RES, Slider("Binarization Threshold", 127, 0, 255), None)),
    "tile_resample": (tile_resample, (None, Slider("Down Sampling Rate", 1.0, 1.0, 8.0), None)),
    "inpaint_only": (inpaint_only, (None, None, None)),
    # the reference units use the picture itself (generation/reference_attention.py) and no ControlNet model
    **{name: (none, (None, Slider("Style Fidelity (only for Balanced mode)", 0.5, 0.0, 1.0), None))
       for name in ("reference_only", "reference_adain", "reference_adain+attn")},
}
