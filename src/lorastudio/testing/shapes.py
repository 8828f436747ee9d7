"""Procedural captioned pictures of flat coloured shapes, and a classifier for them.

This module is the data source of the bundled ``lorastudio-shapes-v1`` base model
(``tools/train_base_model.py``) and the judge of ``bench/base_quality.py``.
It depends only on numpy and Pillow (no torch), and every function is
deterministic given its ``seed`` / ``numpy.random.Generator``.

Rendering
---------
One picture = one flat shape of one of :data:`COLOURS` on a flat background of a
*different* colour of :data:`COLOURS`.  The shape is one of :data:`SHAPES`
(``circle``, ``square``, ``triangle`` = isosceles pointing up, ``diamond`` = square
turned 45 degrees), of a size class of :data:`SIZES` (span as a fraction of the
picture side), at a random position that keeps it fully inside the picture.
Colours get a small per-picture jitter (+-``COLOUR_JITTER`` per channel).
Shapes are drawn at 4x and box-downsampled, so edges are anti-aliased.

Captions (:func:`caption_for`) come in several forms so that free prompts work:
``"a red circle on a blue background"``, ``"a large red circle on a blue background"``,
``"red circle"``, ``"a red circle"``, ``"red circle, blue background"``, ...

Classification measure (:func:`classify_image`)
-----------------------------------------------
Documented, simple, and checked to be ~100% right on rendered pictures
(see ``self_check``):

1. **Background** = per-channel median of the 2-pixel border ring.
2. **Rough foreground** = pixels whose RGB distance from the background is
   > ``ROUGH_THRESHOLD`` (60 on a 0-255 scale); only the largest 4-connected
   component is kept (a stray speck does not count).  If it covers less than
   ``MIN_AREA_FRACTION`` (1.5 %) of the picture, the result is ``("none", "none")``.
3. **Foreground colour** = per-channel median of the rough-foreground pixels that
   lie farthest from the background (top half by distance, i.e. the flat inside,
   not the anti-aliased rim), named by the nearest :data:`COLOURS` entry
   (Euclidean RGB distance).
4. **Refined mask** = pixels whose projection on the background->foreground colour
   segment is past its midpoint (a half-coverage threshold, so anti-aliased edges
   count for their area), again the largest 4-connected component.
5. **Shape** from the refined mask's bounding box (``h`` x ``w``), its *fill*
   = area / (h*w), and the correlation between row index and row width
   (rows of the bounding box, top to bottom):

   * fill >= 0.93                      -> ``square``   (ideal 1.0)
   * 0.66 <= fill < 0.93               -> ``circle``   (ideal pi/4 = 0.785)
   * fill < 0.66 and correlation >= 0.5 -> ``triangle`` (ideal fill 0.5, widths grow downwards)
   * fill < 0.66 and correlation <  0.5 -> ``diamond``  (ideal fill 0.5, widest in the middle)

   A bounding box whose aspect ratio (long/short side) exceeds 1.6 is ``"other"``
   (all taught shapes are as wide as tall).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Iterable

import numpy as np
from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 135, 20),
    "yellow": (245, 225, 40),
    "green": (40, 165, 60),
    "cyan": (40, 205, 225),
    "blue": (35, 65, 205),
    "purple": (135, 45, 175),
    "pink": (250, 150, 205),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
# size class -> (min, max) span of the shape as a fraction of the picture side
SIZES: dict[str, tuple[float, float]] = {
    "small": (0.30, 0.42),
    "medium": (0.45, 0.60),
    "large": (0.64, 0.80),
}
SIZE_NAMES: tuple[str, ...] = tuple(SIZES)
COLOUR_JITTER = 10
SUPERSAMPLE = 4

ROUGH_THRESHOLD = 60.0
MIN_AREA_FRACTION = 0.015


@dataclass(frozen=True)
class ShapeSpec:
    """Everything needed to redraw one picture exactly."""

    colour: str
    shape: str
    background: str
    size: str
    span: float  # fraction of the picture side
    cx: float  # centre, fraction of the picture side
    cy: float
    fg_rgb: tuple[int, int, int]
    bg_rgb: tuple[int, int, int]


def _jitter(rgb: tuple[int, int, int], rng: np.random.Generator) -> tuple[int, int, int]:
    d = rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, size=3)
    return tuple(int(np.clip(c + x, 0, 255)) for c, x in zip(rgb, d))  # type: ignore[return-value]


def sample_spec(
    rng: np.random.Generator,
    colour: str | None = None,
    shape: str | None = None,
    background: str | None = None,
    size: str | None = None,
) -> ShapeSpec:
    """Draw a random picture description; any attribute may be fixed."""
    colour = colour or COLOUR_NAMES[rng.integers(len(COLOUR_NAMES))]
    shape = shape or SHAPES[rng.integers(len(SHAPES))]
    if background is None:
        choices = [c for c in COLOUR_NAMES if c != colour]
        background = choices[rng.integers(len(choices))]
    if background == colour:
        raise ValueError(f"background {background!r} must differ from the shape colour {colour!r}")
    size = size or SIZE_NAMES[rng.integers(len(SIZE_NAMES))]
    lo, hi = SIZES[size]
    span = float(rng.uniform(lo, hi))
    margin = span / 2 + 0.03
    cx = float(rng.uniform(margin, 1 - margin))
    cy = float(rng.uniform(margin, 1 - margin))
    return ShapeSpec(
        colour, shape, background, size, span, cx, cy,
        _jitter(COLOURS[colour], rng), _jitter(COLOURS[background], rng),
    )


def _shape_polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill) -> None:
    """Draw one shape of half-span ``r`` (pixels) centred at ``(cx, cy)``."""
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon(_shape_polygon(shape, cx, cy, r), fill=fill)


def render(spec: ShapeSpec, size: int = 32) -> Image.Image:
    """Render ``spec`` to an RGB picture of ``size`` x ``size`` pixels."""
    big = size * SUPERSAMPLE
    img = Image.new("RGB", (big, big), spec.bg_rgb)
    draw = ImageDraw.Draw(img)
    draw_shape(draw, spec.shape, spec.cx * big, spec.cy * big, spec.span * big / 2, spec.fg_rgb)
    return img.resize((size, size), Image.Resampling.BOX)


def render_scene(rng: np.random.Generator, size: int = 32, max_shapes: int = 4) -> Image.Image:
    """A busier picture (1..max_shapes shapes, some small, some outlined) for VAE training.

    The VAE should reconstruct more than one centred blob (LoRA pictures are busier),
    so its training set mixes these with :func:`render` pictures.
    """
    big = size * SUPERSAMPLE
    bg = _jitter(COLOURS[COLOUR_NAMES[rng.integers(len(COLOUR_NAMES))]], rng)
    img = Image.new("RGB", (big, big), bg)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        shape = SHAPES[rng.integers(len(SHAPES))]
        fill = _jitter(COLOURS[COLOUR_NAMES[rng.integers(len(COLOUR_NAMES))]], rng)
        r = float(rng.uniform(0.06, 0.4)) * big
        cx, cy = (float(v) * big for v in rng.uniform(0.1, 0.9, size=2))
        if rng.random() < 0.2:
            width = max(SUPERSAMPLE, int(r * 0.25))
            if shape == "circle":
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fill, width=width)
            else:
                pts = _shape_polygon(shape, cx, cy, r)
                draw.line(pts + [pts[0]], fill=fill, width=width, joint="curve")
        else:
            draw_shape(draw, shape, cx, cy, r, fill)
    return img.resize((size, size), Image.Resampling.BOX)


CAPTION_TEMPLATES: tuple[str, ...] = (
    "a {colour} {shape} on a {background} background",
    "a {size} {colour} {shape} on a {background} background",
    "{colour} {shape} on {background}",
    "{colour} {shape}, {background} background",
    "a {colour} {shape}",
    "{colour} {shape}",
    "a {size} {colour} {shape}",
)
# how often each template is used (the full form most often)
CAPTION_WEIGHTS: tuple[float, ...] = (0.40, 0.15, 0.08, 0.07, 0.12, 0.12, 0.06)


def caption_for(spec: ShapeSpec, rng: np.random.Generator | None = None, template: int | None = None) -> str:
    """Caption for ``spec``: the canonical long form, or a random template from ``rng``."""
    if template is None:
        template = 0 if rng is None else int(rng.choice(len(CAPTION_TEMPLATES), p=CAPTION_WEIGHTS))
    return CAPTION_TEMPLATES[template].format(
        colour=spec.colour, shape=spec.shape, background=spec.background, size=spec.size
    )


def random_captions(n: int, seed: int = 0) -> list[str]:
    """``n`` captions of random pictures, in the training templates' mix (class prompts for
    regularisation pictures; the benchmark prompts come from :func:`benchmark_prompts`)."""
    rng = np.random.default_rng(seed)
    return [caption_for(sample_spec(rng), rng) for _ in range(n)]


def benchmark_prompts(n_per_pair: int = 2, seed: int = 1234) -> list[dict[str, str]]:
    """Prompts covering every colour x shape ``n_per_pair`` times, with varied backgrounds.

    Returns dicts with ``prompt``, ``colour``, ``shape``, ``background``.
    ``n_per_pair=2`` gives 10 colours x 4 shapes x 2 = 80 prompts.
    """
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n_per_pair):
        for i, colour in enumerate(COLOUR_NAMES):
            for j, shape in enumerate(SHAPES):
                bgs = [c for c in COLOUR_NAMES if c != colour]
                background = bgs[(i * 3 + j * 5 + k * 7 + int(rng.integers(len(bgs)))) % len(bgs)]
                out.append(
                    {
                        "prompt": f"a {colour} {shape} on a {background} background",
                        "colour": colour,
                        "shape": shape,
                        "background": background,
                    }
                )
    return out


# ---------------------------------------------------------------- classification


def _largest_component(mask: np.ndarray) -> np.ndarray:
    h, w = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    best: list[tuple[int, int]] = []
    for y0 in range(h):
        for x0 in range(w):
            if not mask[y0, x0] or seen[y0, x0]:
                continue
            comp = []
            q = deque([(y0, x0)])
            seen[y0, x0] = True
            while q:
                y, x = q.popleft()
                comp.append((y, x))
                for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                    ny, nx = y + dy, x + dx
                    if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        q.append((ny, nx))
            if len(comp) > len(best):
                best = comp
    out = np.zeros_like(mask, dtype=bool)
    if best:
        ys, xs = zip(*best)
        out[list(ys), list(xs)] = True
    return out


def nearest_colour(rgb: Iterable[float]) -> str:
    v = np.asarray(list(rgb), dtype=np.float64)
    names = COLOUR_NAMES
    d = [float(np.sum((v - np.asarray(COLOURS[n], dtype=np.float64)) ** 2)) for n in names]
    return names[int(np.argmin(d))]


def classify_image(image: Image.Image | np.ndarray) -> dict:
    """Classify the foreground of a picture: ``{"colour", "shape", "background", ...}``.

    See the module docstring for the exact measure.
    """
    a = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float64)
    h, w, _ = a.shape
    ring = np.concatenate([a[:2].reshape(-1, 3), a[-2:].reshape(-1, 3), a[:, :2].reshape(-1, 3), a[:, -2:].reshape(-1, 3)])
    bg = np.median(ring, axis=0)
    dist = np.linalg.norm(a - bg, axis=-1)
    rough = _largest_component(dist > ROUGH_THRESHOLD)
    result = {"background": nearest_colour(bg), "colour": "none", "shape": "none", "fill": 0.0, "corr": 0.0}
    if rough.sum() < MIN_AREA_FRACTION * h * w:
        return result
    d_in = dist[rough]
    core = rough & (dist >= np.median(d_in))
    fg = np.median(a[core], axis=0)
    result["colour"] = nearest_colour(fg)
    axis = fg - bg
    denom = float(axis @ axis)
    t = ((a - bg) @ axis) / max(denom, 1e-6)
    mask = _largest_component(t > 0.5)
    if mask.sum() < MIN_AREA_FRACTION * h * w:
        mask = rough
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
    bh, bw = y1 - y0 + 1, x1 - x0 + 1
    fill = float(mask.sum()) / float(bh * bw)
    widths = mask[y0 : y1 + 1, x0 : x1 + 1].sum(axis=1).astype(np.float64)
    rows = np.arange(bh, dtype=np.float64)
    if bh > 2 and widths.std() > 1e-6:
        corr = float(np.corrcoef(rows, widths)[0, 1])
    else:
        corr = 0.0
    result["fill"], result["corr"] = round(fill, 3), round(corr, 3)
    if max(bh, bw) / max(1, min(bh, bw)) > 1.6:
        result["shape"] = "other"
    elif fill >= 0.93:
        result["shape"] = "square"
    elif fill >= 0.66:
        result["shape"] = "circle"
    elif corr >= 0.5:
        result["shape"] = "triangle"
    else:
        result["shape"] = "diamond"
    return result


def self_check(n: int = 400, size: int = 32, seed: int = 0) -> dict[str, float]:
    """Accuracy of :func:`classify_image` on freshly rendered pictures (should be ~1.0)."""
    rng = np.random.default_rng(seed)
    c_ok = s_ok = 0
    for _ in range(n):
        spec = sample_spec(rng)
        r = classify_image(render(spec, size))
        c_ok += r["colour"] == spec.colour
        s_ok += r["shape"] == spec.shape
    return {"colour_accuracy": c_ok / n, "shape_accuracy": s_ok / n}


if __name__ == "__main__":  # pragma: no cover
    print(self_check())
