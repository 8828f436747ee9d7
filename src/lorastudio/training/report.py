"""A loss-curve picture for the version folder, drawn with Pillow (no plotting library needed)."""

from __future__ import annotations

import json
from pathlib import Path

from lorastudio.core.atomic import atomic_path


def write_loss_curve(metrics: Path, out: Path, size: tuple[int, int] = (640, 320)) -> Path | None:
    from PIL import Image, ImageDraw

    if not metrics.exists():
        return None
    rows = [json.loads(line) for line in metrics.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(rows) < 2:
        return None
    w, h = size
    pad = 40
    steps = [r["step"] for r in rows]
    raw = [r["loss"] for r in rows]
    smooth = [r.get("smoothed", r["loss"]) for r in rows]
    lo, hi = min(raw), max(raw)
    hi = hi if hi > lo else lo + 1e-6
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    d.rectangle([pad, pad // 2, w - pad // 2, h - pad], outline="black")

    def xy(s, v):
        x = pad + (s - steps[0]) / max(1, steps[-1] - steps[0]) * (w - 1.5 * pad)
        y = (h - pad) - (v - lo) / (hi - lo) * (h - 1.5 * pad)
        return x, y

    d.line([xy(s, v) for s, v in zip(steps, raw)], fill=(170, 190, 230), width=1)
    d.line([xy(s, v) for s, v in zip(steps, smooth)], fill=(20, 60, 160), width=2)
    d.text((pad, h - pad + 8), f"step {steps[0]}", fill="black")
    d.text((w - pad * 3, h - pad + 8), f"step {steps[-1]}", fill="black")
    d.text((4, pad // 2), f"{hi:.4f}", fill="black")
    d.text((4, h - pad - 10), f"{lo:.4f}", fill="black")
    d.text((w // 2 - 40, 4), "training loss", fill="black")
    with atomic_path(out) as tmp:
        img.save(tmp, format="PNG")
    return out
