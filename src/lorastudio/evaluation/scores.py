"""Simple, documented image measures for "did the LoRA learn the concept?".

Concept score (0..1): how much generated images resemble the training pictures. Each image is
reduced to a 16x16 RGB thumbnail (the training pictures with transparency composited on their
training background); its similarity to one training picture is
    0.5 * colour-histogram intersection (4x4x4 RGB bins)  +  0.5 * (1 - mean |pixel difference| / 255)
and an image's score is its best match among the training pictures; the concept score is the
mean over images. Colour histograms catch the character's palette, the pixel term its layout.
Neither needs a neural network, so the score is reproducible on any machine.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from PIL import Image

THUMB = 16
BINS = 4


def _thumb(img: Image.Image, background=(255, 255, 255)) -> np.ndarray:
    if img.mode in ("RGBA", "LA", "P"):
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (*background, 255))
        img = Image.alpha_composite(bg, img)
    return np.asarray(img.convert("RGB").resize((THUMB, THUMB), Image.BILINEAR), dtype=np.float32)


def _hist(t: np.ndarray) -> np.ndarray:
    q = np.clip((t / 256.0 * BINS).astype(int), 0, BINS - 1)
    idx = q[..., 0] * BINS * BINS + q[..., 1] * BINS + q[..., 2]
    h = np.bincount(idx.ravel(), minlength=BINS ** 3).astype(np.float32)
    return h / h.sum()


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    hist = float(np.minimum(_hist(a), _hist(b)).sum())
    pixel = 1.0 - float(np.abs(a - b).mean()) / 255.0
    return 0.5 * hist + 0.5 * pixel


def concept_score(generated: Iterable[Image.Image], references: Iterable[Image.Image]) -> float:
    refs = [_thumb(r) for r in references]
    gens = [_thumb(g) for g in generated]
    if not refs or not gens:
        raise ValueError("concept_score needs generated and reference images")
    return float(np.mean([max(similarity(g, r) for r in refs) for g in gens]))
