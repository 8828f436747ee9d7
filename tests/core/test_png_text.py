"""PNG/JPEG/WebP infotext storage, checked at the byte level against how A1111 writes it.

A1111 stores PNG infotext through Pillow's PngInfo.add_text and JPEG/WebP infotext as an
EXIF UserComment built by piexif. The JPEG below is assembled byte by byte the way
`piexif.dump` + `piexif.insert` lay it out (checked once against piexif 1.1.3: the EXIF
block for "ab" is the PIEXIF_AB_HEX constant), so the test needs no piexif.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image, features

from lorastudio.core.png_text import decode_user_comment, read_infotext, write_png_with_infotext

INFOTEXT = ("a cat, (fluffy:1.2)\nNegative prompt: blurry\n"
            "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 16x8, Lora hashes: \"cat: 0123456789ab\"")
JAPANESE = "1人の少女, 桜\nNegative prompt: 低品質\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 2, Size: 16x8"

# piexif.dump({"Exif": {UserComment: UserComment.dump("ab", encoding="unicode")}}) from piexif 1.1.3.
PIEXIF_AB_HEX = ("4578696600004d4d002a00000008000187690004000000010000001a00000000000192860007"
                 "0000000c00000028554e49434f44450000610062")


def _image() -> Image.Image:
    return Image.new("RGB", (16, 8), (200, 30, 90))


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        chunks.append((kind, data[pos + 8:pos + 8 + length]))
        pos += 12 + length
    return chunks


def _piexif_style_exif(text: str) -> bytes:
    """EXIF as piexif.dump writes it: big-endian, IFD0 -> Exif IFD -> UserComment "UNICODE"."""
    comment = b"UNICODE\x00" + text.encode("utf_16_be")
    ifd0 = struct.pack(">H", 1) + struct.pack(">HHII", 0x8769, 4, 1, 26) + struct.pack(">I", 0)
    exif_ifd = struct.pack(">H", 1) + struct.pack(">HHII", 0x9286, 7, len(comment), 40)
    return b"Exif\x00\x00" + b"MM\x00\x2a" + struct.pack(">I", 8) + ifd0 + exif_ifd + comment


def _a1111_jpeg(text: str) -> bytes:
    """A Pillow JPEG after piexif.insert: the EXIF APP1 segment replaces the JFIF APP0 one."""
    buf = io.BytesIO()
    _image().save(buf, format="JPEG", quality=80)
    jpeg = buf.getvalue()
    assert jpeg[2:4] == b"\xff\xe0"
    (app0_length,) = struct.unpack(">H", jpeg[4:6])
    exif = _piexif_style_exif(text)
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif + jpeg[4 + app0_length:]


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def test_piexif_layout_reproduced():
    assert _piexif_style_exif("ab").hex() == PIEXIF_AB_HEX


def test_latin1_infotext_is_a_text_chunk_and_reads_back(tmp_path):
    path = tmp_path / "out.png"
    write_png_with_infotext(_image(), path, INFOTEXT)
    chunks = _png_chunks(path.read_bytes())
    assert (b"tEXt", b"parameters\x00" + INFOTEXT.encode("latin-1")) in chunks
    assert [k for k, _ in chunks].index(b"tEXt") < [k for k, _ in chunks].index(b"IDAT")
    assert read_infotext(path) == INFOTEXT
    with Image.open(path) as img:
        assert img.size == (16, 8) and img.getpixel((3, 3)) == (200, 30, 90)


def test_non_latin1_infotext_is_uncompressed_itxt(tmp_path):
    path = tmp_path / "jp.png"
    write_png_with_infotext(_image(), path, JAPANESE)
    itxt = [payload for kind, payload in _png_chunks(path.read_bytes()) if kind == b"iTXt"]
    # keyword, NUL, compression flag 0, method 0, empty language tag, empty translated keyword
    assert itxt == [b"parameters\x00\x00\x00\x00\x00" + JAPANESE.encode("utf-8")]
    assert read_infotext(path) == JAPANESE


def test_extra_chunks_come_first_and_parameters_key_is_replaced(tmp_path):
    path = tmp_path / "extra.png"
    write_png_with_infotext(_image(), path, INFOTEXT,
                            extra={"Software": "lorastudio", "parameters": "stale", "Title": "ü"})
    texts = [payload.split(b"\x00", 1) for kind, payload in _png_chunks(path.read_bytes()) if kind == b"tEXt"]
    assert [key for key, _ in texts] == [b"Software", b"parameters", b"Title"]
    assert dict(texts)[b"parameters"] == INFOTEXT.encode("latin-1")
    assert read_infotext(path) == INFOTEXT


def test_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "keep.png"
    write_png_with_infotext(_image(), path, "first\nSteps: 1, Sampler: Euler, Seed: 1")
    before = path.read_bytes()

    def broken_save(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"\x89PNG partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        write_png_with_infotext(_image(), path, INFOTEXT)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.png"], "temporary file left behind"


def test_reads_a1111_jpeg_exif_user_comment(tmp_path):
    for text in (INFOTEXT, JAPANESE):
        path = tmp_path / "a1111.jpg"
        path.write_bytes(_a1111_jpeg(text))
        assert read_infotext(path) == text


def test_reads_webp_exif_user_comment(tmp_path):
    assert features.check("webp"), "this Pillow has no WebP: A1111 writes WebP, lorastudio must read it"
    path = tmp_path / "a1111.webp"
    _image().save(path, format="WEBP", exif=_piexif_style_exif(JAPANESE))
    assert read_infotext(path) == JAPANESE


def test_little_endian_exif_is_decoded_in_its_byte_order(tmp_path):
    # piexif (so A1111) would read this UTF-16-LE text as UTF-16-BE and show garbage.
    comment = b"UNICODE\x00" + JAPANESE.encode("utf_16_le")
    ifd0 = struct.pack("<H", 1) + struct.pack("<HHII", 0x8769, 4, 1, 26) + struct.pack("<I", 0)
    exif_ifd = struct.pack("<H", 1) + struct.pack("<HHII", 0x9286, 7, len(comment), 44) + struct.pack("<I", 0)
    raw = b"Exif\x00\x00" + b"II\x2a\x00" + struct.pack("<I", 8) + ifd0 + exif_ifd + comment
    path = tmp_path / "le.jpg"
    _image().save(path, format="JPEG", exif=raw)
    assert read_infotext(path) == JAPANESE


def test_text_chunk_after_image_data_is_found(tmp_path):
    # Some writers put tEXt after IDAT; Pillow only reports it once the pixels are loaded.
    buf = io.BytesIO()
    _image().save(buf, format="PNG")
    chunks = _png_chunks(buf.getvalue())
    body = b"".join(_chunk(kind, payload) for kind, payload in chunks if kind != b"IEND")
    data = (b"\x89PNG\r\n\x1a\n" + body + _chunk(b"tEXt", b"parameters\x00" + INFOTEXT.encode("latin-1"))
            + _chunk(b"IEND", b""))
    path = tmp_path / "late.png"
    path.write_bytes(data)
    assert read_infotext(path) == INFOTEXT


def test_exif_comment_overrides_png_parameters_like_a1111(tmp_path):
    path = tmp_path / "both.png"
    _image().save(path, format="PNG", exif=_piexif_style_exif("from exif"), pnginfo=_pnginfo("from text"))
    assert read_infotext(path) == "from exif"
    _image().save(path, format="PNG", exif=_piexif_style_exif(""), pnginfo=_pnginfo("from text"))
    assert read_infotext(path) == "from text"


def _pnginfo(text: str):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    return info


def test_missing_infotext_is_none(tmp_path):
    png, jpg = tmp_path / "plain.png", tmp_path / "plain.jpg"
    _image().save(png)
    _image().save(jpg)
    assert read_infotext(png) is None
    assert read_infotext(jpg) is None


def test_gif_comment(tmp_path):
    path = tmp_path / "anim.gif"
    _image().save(path, format="GIF", comment=INFOTEXT.encode("utf-8"))
    assert read_infotext(path) == INFOTEXT


def test_user_comment_decoding():
    assert decode_user_comment(b"UNICODE\x00" + "桜, x".encode("utf_16_be")) == "桜, x"
    assert decode_user_comment(b"UNICODE\x00" + "桜, x".encode("utf_16_le"), little_endian=True) == "桜, x"
    assert decode_user_comment(b"ASCII\x00\x00\x00Steps: 20") == "Steps: 20"
    assert decode_user_comment(b"JIS\x00\x00\x00\x00\x00" + "桜".encode("shift_jis")) == "桜"
    # Undefined or unknown prefixes: A1111 falls back to UTF-8 of the whole value, prefix included.
    assert decode_user_comment(b"\x00" * 8 + b"abc") == "\x00" * 8 + "abc"
    assert decode_user_comment("桜".encode("utf-8")) == "桜"
    assert decode_user_comment(b"") == ""
