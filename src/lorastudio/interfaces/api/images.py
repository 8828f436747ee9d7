"""Images crossing the HTTP boundary: base64 in and out, checked before any pixel is decoded."""

from __future__ import annotations

import base64
import binascii
import io
import math
import re
from typing import Any

from lorastudio.core.errors import InvalidParameter

# Keys PIL puts in `info` that are format details, not text a user wrote (A1111 drops the same).
_FORMAT_KEYS = {"jfif", "jfif_version", "jfif_unit", "jfif_density", "dpi", "exif", "loop", "background",
                "timestamp", "duration", "progressive", "progression", "icc_profile", "chromaticity",
                "photoshop", "transparency", "gamma", "srgb", "aspect"}
_DATA_URL = re.compile(r"^data:[\w/+.-]+;base64,", re.I)


def decode_base64(data: str, field: str, *, max_bytes: int) -> bytes:
    data = _DATA_URL.sub("", data.strip(), count=1)
    # Checked on the text first: base64 is 4/3 of the bytes, no need to decode to know.
    if len(data) * 3 // 4 > max_bytes:
        raise InvalidParameter(field, f"<{len(data)} base64 characters>", f"image over {max_bytes} bytes")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidParameter(field, data[:40] + "...", "not valid base64") from None


def open_image(raw: bytes, field: str, *, max_pixels: int):
    """Open an image and check its declared size before anything is decompressed.

    PIL reads only the header here; a 100000x100000 PNG of a few KB (a decompression bomb) is
    refused before its pixel data is touched.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(raw))
    except UnidentifiedImageError:
        # Pillow's own text names an internal BytesIO object: say what we accept instead.
        raise InvalidParameter(field, f"<{len(raw)} bytes>",
                               "not a readable image (PNG, JPEG, WebP, BMP, GIF or TIFF expected)") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidParameter(field, f"<{len(raw)} bytes>", f"not a readable image ({exc})") from None
    w, h = img.size
    if w <= 0 or h <= 0 or w * h > max_pixels:
        raise InvalidParameter(field, f"{w}x{h}", f"image over the {max_pixels}-pixel limit (decompression bomb?)")
    frames = getattr(img, "n_frames", 1)
    if frames > 1 and frames * w * h > max_pixels:
        raise InvalidParameter(field, f"{frames} frames of {w}x{h}", "animated image too large")
    return img


def decode_image(data: str, field: str, *, max_bytes: int, max_pixels: int, load: bool = True):
    img = open_image(decode_base64(data, field, max_bytes=max_bytes), field, max_pixels=max_pixels)
    if load:
        try:
            img.load()
        except Exception as exc:  # truncated data, bad CRC, PIL's own bomb limits...
            raise InvalidParameter(field, "<image>", f"cannot decode the image ({exc})") from None
    return img


def text_info(raw: bytes, *, max_pixels: int) -> tuple[str | None, dict[str, Any]]:
    """(A1111 `parameters` text or None, the other text items) of an encoded image."""
    from lorastudio.core.png_text import read_infotext

    img = open_image(raw, "image", max_pixels=max_pixels)  # size checked before load() below
    try:
        img.load()  # text chunks written after the pixel data are only read on load
    except Exception:  # a damaged tail loses only the chunks after it
        pass
    items: dict[str, Any] = {}
    for key, value in (img.info or {}).items():
        if not isinstance(key, str) or key.lower() in _FORMAT_KEYS or key == "parameters":
            continue
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if isinstance(value, (str, int, bool)) or (isinstance(value, float) and math.isfinite(value)):
            items[key] = value
    try:
        geninfo = read_infotext(io.BytesIO(raw))  # PNG chunks, EXIF UserComment, GIF comment
    except Exception:
        geninfo = img.info.get("parameters") if isinstance(img.info.get("parameters"), str) else None
    return geninfo, items


def encode_png(img, infotext: str | None) -> str:
    """Base64 PNG carrying `parameters`, as A1111 sends it (so png-info can read it back)."""
    from PIL.PngImagePlugin import PngInfo

    meta = None
    if infotext:
        meta = PngInfo()
        meta.add_text("parameters", infotext)  # PIL switches to iTXt for non-Latin-1 text
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=meta)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def image_grid(images: list):
    """A1111's default grid (n_rows = -1): about as many rows as columns."""
    from lorastudio.generation.grids import tile_grid

    return tile_grid(images, rows=max(1, min(len(images), round(math.sqrt(len(images))))))
