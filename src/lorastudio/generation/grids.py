"""Labelled image grids (A1111's X/Y plot, without the script machinery)."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont


def image_grid(rows: Sequence[Sequence[Image.Image]], *, row_labels: Sequence[str] = (),
               col_labels: Sequence[str] = (), cell: int = 128, title: str = "") -> Image.Image:
    """Draw `rows` of images, each scaled to `cell` px, with labels on the left and on top."""
    font = ImageFont.load_default()
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    left = 8 + max((int(font.getlength(t)) for t in row_labels), default=0) if row_labels else 0
    top = (18 if col_labels else 0) + (18 if title else 0)
    grid = Image.new("RGB", (left + n_cols * (cell + 4) + 4, top + n_rows * (cell + 4) + 4), "white")
    draw = ImageDraw.Draw(grid)
    if title:
        draw.text((4, 2), title, fill="black", font=font)
    for j, label in enumerate(col_labels):
        draw.text((left + 4 + j * (cell + 4), top - 16), label, fill="black", font=font)
    for i, row in enumerate(rows):
        y = top + 4 + i * (cell + 4)
        if i < len(row_labels):
            draw.text((4, y + cell // 2 - 6), row_labels[i], fill="black", font=font)
        for j, img in enumerate(row):
            # Small models draw 32-px pictures: NEAREST keeps them crisp when enlarged.
            grid.paste(img.convert("RGB").resize((cell, cell), Image.NEAREST), (left + 4 + j * (cell + 4), y))
    return grid
