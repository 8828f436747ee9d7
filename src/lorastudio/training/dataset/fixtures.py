"""A small procedurally drawn sticker set, for tests, benches and the demo.

One character ("Deltamon": a round yellow creature with a brown outline, two eyes and pink
cheeks) in varied poses, drawn like a LINE sticker: transparent background, white cut-line
border. Pillow only; the same seed gives byte-identical files.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

from lorastudio.core.atomic import atomic_path, atomic_write_text
from lorastudio.core.prompt_syntax import escape_prompt_text

POSES = ("waving", "happy", "sleeping", "surprised", "sad", "jumping", "angry", "love")
_SUPERSAMPLE = 4
_BODY = (255, 214, 64, 255)
_OUTLINE = (120, 62, 20, 255)
_CHEEK = (255, 140, 150, 255)
_INK = (30, 24, 20, 255)


@dataclass(frozen=True)
class _Pose:
    name: str
    cx: float  # body centre, in canvas units 0..1
    cy: float
    r: float  # body radius, canvas units
    tilt: float  # degrees


def draw_sticker_dataset(
    folder: str | Path,
    n: int = 12,
    trigger: str = "DeltamonStamp",
    seed: int = 0,
    size: int = 128,
    *,
    with_captions: bool = True,
) -> list[Path]:
    """Write `n` RGBA PNG stickers (and `name.txt` captions like "DeltamonStamp, waving").

    Returns the picture paths, sorted. Every pose appears before any repeats, so even a
    small set shows the variety a LoRA is meant to learn.
    """
    if n < 1:
        raise ValueError(f"n={n}: need at least one sticker")
    if size < 32:
        raise ValueError(f"size={size}: stickers smaller than 32 px cannot show a face")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    order = list(POSES)
    rng.shuffle(order)
    paths: list[Path] = []
    for i in range(n):
        name = order[i % len(order)]
        pose = _Pose(name=name, cx=rng.uniform(0.42, 0.58), cy=rng.uniform(0.45, 0.58),
                     r=rng.uniform(0.22, 0.3), tilt=rng.uniform(-12, 12))
        if name == "jumping":
            pose = _Pose(name, pose.cx, pose.cy - 0.06, pose.r, pose.tilt)
        image = _draw_sticker(pose, size, rng)
        path = folder / f"sticker_{i:02d}.png"
        with atomic_path(path) as tmp:
            image.save(tmp, format="PNG", optimize=False)
        if with_captions:
            atomic_write_text(path.with_suffix(".txt"), f"{escape_prompt_text(trigger)}, {name}\n")
        paths.append(path)
    return paths


def _draw_sticker(pose: _Pose, size: int, rng: random.Random) -> Image.Image:
    s = size * _SUPERSAMPLE
    layer = Image.new("RGBA", (s, s), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    cx, cy, r = pose.cx * s, pose.cy * s, pose.r * s
    line = max(2, round(r * 0.08))
    _limbs(d, pose.name, cx, cy, r, line)
    d.ellipse((cx - r, cy - r * 0.92, cx + r, cy + r * 0.92), fill=_BODY, outline=_OUTLINE, width=line)
    _face(d, pose.name, cx, cy, r, line, rng)
    if pose.tilt:
        layer = layer.rotate(pose.tilt, resample=Image.Resampling.BICUBIC, center=(cx, cy))
    layer = _with_cut_line(layer, border=max(4, round(s * 0.025)))
    # Pillow resizes RGBA premultiplied, so the edges do not pick up a dark fringe.
    return layer.resize((size, size), Image.Resampling.LANCZOS)


def _limbs(d: ImageDraw.ImageDraw, pose: str, cx: float, cy: float, r: float, line: int) -> None:
    arm = r * 0.28
    feet_spread = 0.55 if pose == "jumping" else 0.4
    for side in (-1, 1):
        fx = cx + side * r * feet_spread
        fy = cy + r * 0.9
        d.ellipse((fx - arm, fy - arm * 0.6, fx + arm, fy + arm * 0.6), fill=_BODY, outline=_OUTLINE, width=line)
    # Arm angles in degrees from pointing straight down, per side (left, right).
    angles = {
        "waving": (35, 150), "happy": (140, 140), "jumping": (120, 120), "love": (60, 60),
        "angry": (80, 80), "surprised": (110, 110), "sad": (15, 15), "sleeping": (25, 25),
    }[pose]
    for side, angle in zip((-1, 1), angles):
        a = math.radians(angle)
        ax = cx + side * (r * 0.95 + math.sin(a) * arm * 0.9)
        ay = cy + r * 0.15 + math.cos(a) * arm * 1.4
        d.ellipse((ax - arm * 0.6, ay - arm * 0.6, ax + arm * 0.6, ay + arm * 0.6),
                  fill=_BODY, outline=_OUTLINE, width=line)


def _face(d: ImageDraw.ImageDraw, pose: str, cx: float, cy: float, r: float, line: int,
          rng: random.Random) -> None:
    eye_dx, eye_y = r * 0.36, cy - r * 0.18
    ew, eh = r * 0.11, r * 0.17
    for side in (-1, 1):
        ex = cx + side * eye_dx
        if pose in ("sleeping", "happy"):
            # Closed eyes: an arc, upward for happy, downward for asleep.
            start, end = (200, 340) if pose == "happy" else (20, 160)
            d.arc((ex - ew * 1.4, eye_y - eh, ex + ew * 1.4, eye_y + eh), start, end, fill=_INK, width=line)
        else:
            d.ellipse((ex - ew, eye_y - eh, ex + ew, eye_y + eh), fill=_INK)
            d.ellipse((ex - ew * 0.2, eye_y - eh * 0.7, ex + ew * 0.5, eye_y - eh * 0.1), fill=(255, 255, 255, 255))
        cheek_y = cy + r * 0.12
        d.ellipse((ex + side * r * 0.12 - r * 0.12, cheek_y - r * 0.07, ex + side * r * 0.12 + r * 0.12,
                   cheek_y + r * 0.07), fill=_CHEEK)
        if pose == "angry":
            d.line((ex - side * ew * 1.6, eye_y - eh * 1.9, ex + side * ew * 1.6, eye_y - eh * 1.2),
                   fill=_INK, width=line)
    my = cy + r * 0.3
    mw = r * 0.22
    if pose == "surprised":
        d.ellipse((cx - mw * 0.45, my - mw * 0.3, cx + mw * 0.45, my + mw * 0.7), fill=_INK)
    elif pose in ("sad", "angry"):
        d.arc((cx - mw, my, cx + mw, my + mw * 1.2), 200, 340, fill=_INK, width=line)
    elif pose == "sleeping":
        d.line((cx - mw * 0.5, my + mw * 0.2, cx + mw * 0.5, my + mw * 0.2), fill=_INK, width=line)
        _zzz(d, cx + r * 0.9, cy - r * 1.1, r * 0.25, line)
    else:
        d.arc((cx - mw, my - mw * 0.8, cx + mw, my + mw * 0.6), 20, 160, fill=_INK, width=line)
    if pose == "sad":
        tx, ty = cx + eye_dx + ew, eye_y + eh * 1.4
        d.ellipse((tx - ew * 0.6, ty - ew * 0.3, tx + ew * 0.6, ty + ew * 1.4), fill=(90, 170, 255, 255))
    if pose == "love":
        _heart(d, cx + r * rng.uniform(0.8, 1.0), cy - r * rng.uniform(0.9, 1.1), r * 0.3)


def _zzz(d: ImageDraw.ImageDraw, x: float, y: float, h: float, line: int) -> None:
    for k in range(2):
        ox, oy, hh = x + k * h * 0.9, y - k * h * 0.9, h * (1 - 0.25 * k)
        d.line([(ox, oy), (ox + hh, oy), (ox, oy + hh), (ox + hh, oy + hh)], fill=_INK, width=line)


def _heart(d: ImageDraw.ImageDraw, x: float, y: float, r: float) -> None:
    red = (235, 60, 90, 255)
    d.ellipse((x - r, y - r * 0.5, x, y + r * 0.5), fill=red)
    d.ellipse((x, y - r * 0.5, x + r, y + r * 0.5), fill=red)
    d.polygon([(x - r * 0.97, y + r * 0.1), (x + r * 0.97, y + r * 0.1), (x, y + r * 1.2)], fill=red)


def _with_cut_line(layer: Image.Image, border: int) -> Image.Image:
    """Put a white border around the drawing, as sticker printers cut them."""
    alpha = layer.getchannel("A").point(lambda v: 255 if v > 0 else 0)
    # Blur + threshold grows the shape by about `border` in every direction; a MaxFilter of that
    # size does the same but costs seconds per picture.
    grown = alpha.filter(ImageFilter.GaussianBlur(border * 0.5)).point(lambda v: 255 if v > 6 else 0)
    out = Image.new("RGBA", layer.size, (255, 255, 255, 0))
    out.putalpha(grown)
    out.alpha_composite(layer)
    return out
