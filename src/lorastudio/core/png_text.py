"""Store and read the infotext in image files the way A1111 does.

Writing (A1111 `images.save_image_with_geninfo`, PNG branch): each entry becomes a PNG text
chunk through Pillow's `PngInfo.add_text`, which writes tEXt when the text is latin-1 and
uncompressed iTXt otherwise; `parameters` holds the infotext.

Reading (A1111 `images.read_info_from_image`): the `parameters` text chunk, overridden by a
non-empty EXIF UserComment (how A1111 stores the infotext in JPEG and WebP, via piexif);
a GIF `comment` when there is no EXIF.
"""

from __future__ import annotations

import contextlib
import os
from typing import Mapping

from PIL import Image, PngImagePlugin

from lorastudio.core.atomic import atomic_path

PARAMETERS_KEY = "parameters"
_EXIF_IFD_POINTER = 0x8769
_USER_COMMENT = 0x9286

# EXIF UserComment starts with 8 bytes naming the character code (EXIF 2.3, table 9).
_ASCII_PREFIX = b"ASCII\x00\x00\x00"
_JIS_PREFIX = b"JIS\x00\x00\x00\x00\x00"
_UNICODE_PREFIX = b"UNICODE\x00"
_UNDEFINED_PREFIX = b"\x00" * 8


def write_png_with_infotext(
    image: Image.Image,
    path: str | os.PathLike[str],
    infotext: str,
    extra: Mapping[str, str] | None = None,
) -> None:
    """Save `image` as PNG with the infotext in a `parameters` chunk, atomically.

    `extra` entries are written first, in order, like A1111's `existing_pnginfo`; a
    `parameters` key in it is replaced by `infotext` where it stands.
    """
    chunks = dict(extra or {})
    chunks[PARAMETERS_KEY] = infotext
    pnginfo = PngImagePlugin.PngInfo()
    for key, value in chunks.items():
        pnginfo.add_text(key, str(value))
    with atomic_path(path) as tmp:
        # The temporary name has no .png suffix, so the format must be explicit.
        image.save(tmp, format="PNG", pnginfo=pnginfo)


def read_infotext(path: str | os.PathLike[str]) -> str | None:
    """The infotext stored in a PNG, JPEG, WebP or GIF file, or None when there is none."""
    with Image.open(path) as image:
        info = dict(image.info)
        if image.format == "PNG" and PARAMETERS_KEY not in info:
            # Text chunks placed after the image data only show up once it is loaded;
            # a damaged image still has whatever text came before the damage.
            with contextlib.suppress(OSError):
                image.load()
            info = dict(image.info)
        geninfo = info.get(PARAMETERS_KEY)
        if "exif" in info:
            comment = _user_comment_text(image)
            if comment:
                geninfo = comment
        elif "comment" in info:
            comment = info["comment"]
            geninfo = comment.decode("utf8", errors="ignore") if isinstance(comment, bytes) else comment
    return None if geninfo is None else str(geninfo)


def _user_comment_text(image: Image.Image) -> str:
    try:
        raw = image.getexif().get_ifd(_EXIF_IFD_POINTER).get(_USER_COMMENT, b"")
    except Exception:  # noqa: BLE001 - Pillow raises many types on malformed EXIF; A1111 then reads nothing
        return ""
    if isinstance(raw, str):
        return raw
    exif = image.info.get("exif", b"")
    little_endian = exif.removeprefix(b"Exif\x00\x00")[:2] == b"II" if isinstance(exif, bytes) else False
    return decode_user_comment(bytes(raw), little_endian=little_endian)


def decode_user_comment(raw: bytes, little_endian: bool = False) -> str:
    """Decode an EXIF UserComment as A1111 does (piexif's UserComment.load, else lossy UTF-8).

    A1111 writes with piexif, whose EXIF is big-endian, so "UNICODE" text is UTF-16-BE.
    piexif decodes UTF-16-BE even in little-endian EXIF (which other writers produce),
    garbling the text; we follow the EXIF byte order instead (`little_endian`).
    """
    prefix, body = raw[:8], raw[8:]
    encodings = {
        _ASCII_PREFIX: "ascii",
        _JIS_PREFIX: "shift_jis",
        _UNICODE_PREFIX: "utf_16_le" if little_endian else "utf_16_be",
    }
    encoding = encodings.get(prefix) if len(raw) >= 8 and prefix != _UNDEFINED_PREFIX else None
    if encoding is None:
        return raw.decode("utf8", errors="ignore")
    return body.decode(encoding, errors="replace")
