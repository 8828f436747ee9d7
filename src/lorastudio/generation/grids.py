"""Labelled image grids (A1111's X/Y plot, without the script machinery)."""

from __future__ import annotations

import math
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


# --- A1111's grid layout (modules/images.py, v1.10): the X/Y/Z plot and the API's batch grid ----------
def tile_grid(images: Sequence[Image.Image], rows: int) -> Image.Image:
    """A1111's `image_grid(imgs, rows=...)`: the images row by row, no gaps, on black; every tile
    takes the first image's size."""
    cols = math.ceil(len(images) / rows)
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w, rows * h), "black")
    for i, img in enumerate(images):
        grid.paste(img, (i % cols * w, i // cols * h))
    return grid


def legend_font(size: int):
    """A1111's grid font (DejaVu Sans); Pillow's own scalable font where DejaVu is not installed."""
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default(size=size)


def annotate_grid(grid: Image.Image, width: int, height: int, hor_texts: Sequence[str], ver_texts: Sequence[str],
                  margin: int = 0) -> Image.Image:
    """A1111's `draw_grid_annotations` for one line of text per column / row: column labels on top,
    row labels on the left (3/4 of a tile wide), wrapped at word boundaries to the space they have,
    centred; `margin` pixels between tiles. An all-empty side takes no room."""
    cols, rows = grid.width // width, grid.height // height
    if cols != len(hor_texts) or rows != len(ver_texts):
        raise ValueError(f"{len(hor_texts)}x{len(ver_texts)} labels for a {cols}x{rows} grid")
    fontsize = (width + height) // 25
    spacing = fontsize // 2
    font = legend_font(fontsize)
    pad_left = 0 if sum(len(t) for t in ver_texts) == 0 else width * 3 // 4
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1), "white"))

    def lines_of(text: str, allowed: int) -> list[tuple[str, tuple[int, int]]]:
        lines = [""]
        for word in text.split():
            candidate = f"{lines[-1]} {word}".strip()
            if measure.textlength(candidate, font=font) <= allowed:
                lines[-1] = candidate
            else:
                lines.append(word)
        out = []
        for line in lines:
            box = measure.multiline_textbbox((0, 0), line, font=font)
            out.append((line, (box[2] - box[0], box[3] - box[1])))
        return out

    hor = [lines_of(t, width) for t in hor_texts]
    ver = [lines_of(t, pad_left) for t in ver_texts]
    # A1111 counts the spacing differently on the two sides; kept, so labels sit where A1111 puts them.
    hor_heights = [sum(s[1] + spacing for _, s in ls) - spacing for ls in hor]
    ver_heights = [sum(s[1] + spacing for _, s in ls) - spacing * len(ls) for ls in ver]
    pad_top = 0 if sum(hor_heights) == 0 else max(hor_heights) + spacing * 2
    result = Image.new("RGB", (grid.width + pad_left + margin * (cols - 1), grid.height + pad_top + margin * (rows - 1)),
                       "white")
    for r in range(rows):
        for c in range(cols):
            tile = grid.crop((width * c, height * r, width * (c + 1), height * (r + 1)))
            result.paste(tile, (pad_left + (width + margin) * c, pad_top + (height + margin) * r))
    draw = ImageDraw.Draw(result)

    def draw_lines(x: float, y: float, lines) -> None:
        for text, size in lines:
            draw.multiline_text((x, y + size[1] / 2), text, font=font, fill=(0, 0, 0), anchor="mm", align="center")
            y += size[1] + spacing

    for c in range(cols):
        draw_lines(pad_left + (width + margin) * c + width / 2, pad_top / 2 - hor_heights[c] / 2, hor[c])
    for r in range(rows):
        draw_lines(pad_left / 2, pad_top + (height + margin) * r + height / 2 - ver_heights[r] / 2, ver[r])
    return result
