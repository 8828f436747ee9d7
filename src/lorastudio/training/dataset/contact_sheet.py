"""A contact sheet: every picture with its mask and caption on one PNG, for a quick look."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from lorastudio.core.atomic import atomic_path

THUMB = 160
TEXT_LINES = 4
LINE_HEIGHT = 12
PAD = 6
_BACKGROUND = (255, 255, 255)
_TEXT = (20, 20, 20)


@dataclass(frozen=True)
class SheetEntry:
    image: Path
    caption: str
    mask: Path | None = None


def cell_size(thumb: int = THUMB) -> tuple[int, int]:
    # The mask sits beside the picture, at the same size; the caption goes below both.
    return 2 * thumb + 3 * PAD, thumb + 2 * PAD + TEXT_LINES * LINE_HEIGHT


def contact_sheet(entries: list[SheetEntry], *, columns: int = 4, thumb: int = THUMB) -> Image.Image:
    from lorastudio.training.dataset.images import load_training_image

    cw, ch = cell_size(thumb)
    rows = max(1, -(-len(entries) // columns))
    sheet = Image.new("RGB", (cw * min(columns, max(1, len(entries))), ch * rows), _BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    chars = max(8, (2 * thumb + PAD) // 6)  # the default bitmap font is about 6 px per character
    for i, e in enumerate(entries):
        x0, y0 = (i % columns) * cw, (i // columns) * ch
        prepared = load_training_image(e.image, _BACKGROUND, min_size=0, verify=False)
        pic = prepared.rgb.copy()
        pic.thumbnail((thumb, thumb), Image.Resampling.LANCZOS)
        sheet.paste(pic, (x0 + PAD + (thumb - pic.width) // 2, y0 + PAD + (thumb - pic.height) // 2))
        mask = None
        if e.mask is not None and e.mask.is_file():
            with Image.open(e.mask) as m:
                mask = m.convert("L")
        elif prepared.mask is not None:
            mask = prepared.mask
        if mask is not None:
            mask = mask.copy()
            mask.thumbnail((thumb, thumb), Image.Resampling.LANCZOS)
            sheet.paste(mask.convert("RGB"), (x0 + 2 * PAD + thumb + (thumb - mask.width) // 2,
                                              y0 + PAD + (thumb - mask.height) // 2))
        lines = textwrap.wrap(e.caption or "(no caption)", chars)[:TEXT_LINES]
        for j, line in enumerate(lines):
            draw.text((x0 + PAD, y0 + thumb + 2 * PAD + j * LINE_HEIGHT), line, fill=_TEXT, font=font)
    return sheet


def write_contact_sheet(folder: Path, out: Path, *, columns: int = 4, thumb: int = THUMB) -> Path:
    """The sheet of a dataset folder: pictures in name order, `<image>.txt` captions, mask files."""
    from lorastudio.training.dataset.captions import read_caption_file
    from lorastudio.training.dataset.ingest import open_source
    from lorastudio.training.dataset.masks import is_mask_file, mask_path_for

    entries = []
    with open_source(folder) as src:
        for f in src.images:
            if is_mask_file(f.rel) or f.path.resolve() == Path(out).resolve():
                continue
            cap = f.path.with_suffix(".txt")
            text = read_caption_file(cap) if cap.is_file() else ""
            entries.append(SheetEntry(f.path, text, mask_path_for(f.path)))
    sheet = contact_sheet(entries, columns=columns, thumb=thumb)
    with atomic_path(out) as tmp:
        sheet.save(tmp, format="PNG")
    return out
