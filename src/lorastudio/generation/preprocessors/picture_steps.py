"""The picture steps the A1111 ControlNet extension runs around every preprocessor: the short side to the
unit's resolution, edge padding to multiples of 64 (its `resize_image_with_pad`), and a grey map spread
over the three channels the ControlNet reads.
"""

from __future__ import annotations

import numpy as np


def resize_short_side(image: np.ndarray, resolution: int) -> np.ndarray:
    """HWC picture with its short side at `resolution`: cubic when enlarging, area when shrinking."""
    import cv2

    h, w = image.shape[:2]
    k = float(resolution) / min(h, w)
    size = (int(round(w * k)), int(round(h * k)))
    if size == (w, h):
        return image
    return cv2.resize(image, size, interpolation=cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA)


def pad_to_64(image: np.ndarray, resolution: int) -> tuple[np.ndarray, tuple[int, int]]:
    """(the picture resized and edge-padded to multiples of 64, its size (h, w) before padding)."""
    img = resize_short_side(image, resolution)
    h, w = img.shape[:2]
    return np.pad(img, [[0, -h % 64], [0, -w % 64], [0, 0]], mode="edge"), (h, w)


def gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    """HW uint8 -> HWC with the same values in R, G and B."""
    return np.repeat(gray[:, :, None], 3, axis=2)
