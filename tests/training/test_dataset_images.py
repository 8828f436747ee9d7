"""Picture decoding: every mode ends as the same sRGB RGB + alpha mask, bad files are named."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

from lorastudio.core.errors import DatasetError
from lorastudio.training.dataset.images import (
    ImageRejected,
    load_training_image,
    pixel_digest,
    probe_image,
    sniff_format,
)

# sRGB primaries adapted to D50, as an ICC matrix/TRC profile stores them.
SRGB_R = (0.4361, 0.2225, 0.0139)
SRGB_G = (0.3851, 0.7169, 0.0971)
SRGB_B = (0.1431, 0.0606, 0.7141)


def _s15(v: float) -> bytes:
    return struct.pack(">i", round(v * 65536))


def _xyz(x: float, y: float, z: float) -> bytes:
    return b"XYZ " + b"\0" * 4 + _s15(x) + _s15(y) + _s15(z)


def rgb_icc_profile(red, green, blue) -> bytes:
    """A minimal ICC v2 RGB display profile with linear curves and the given primaries."""
    curve = b"curv" + b"\0" * 4 + struct.pack(">IH", 1, 0x0100) + b"\0\0"
    tags = [(b"rXYZ", _xyz(*red)), (b"gXYZ", _xyz(*green)), (b"bXYZ", _xyz(*blue)),
            (b"wtpt", _xyz(0.9642, 1.0, 0.8249)), (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve)]
    table = struct.pack(">I", len(tags))
    offset = 128 + 4 + 12 * len(tags)
    body = b""
    for sig, data in tags:
        table += sig + struct.pack(">II", offset + len(body), len(data))
        body += data + b"\0" * (-len(data) % 4)
    header = (struct.pack(">I", offset + len(body)) + b"lcms" + struct.pack(">I", 0x02100000) + b"mntrRGB XYZ "
              + b"\0" * 12 + b"acsp" + b"\0" * 24 + struct.pack(">I", 0) + _s15(0.9642) + _s15(1.0)
              + _s15(0.8249) + b"\0" * 48)
    return header + table + body


def png_with_header(path: Path, width: int, height: int) -> Path:
    """A PNG that declares `width` x `height` but holds almost no data: a bomb header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))
    return path


def noise(size=(96, 96), mode="RGB", seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = len(mode)
    arr = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(arr[..., 0] if channels == 1 else arr, mode)


def test_rgba_is_composited_onto_background_and_alpha_kept(tmp_path):
    im = Image.new("RGBA", (80, 64), (255, 0, 0, 0))
    im.putpixel((10, 10), (255, 0, 0, 255))
    im.putpixel((20, 10), (0, 0, 255, 128))
    p = tmp_path / "s.png"
    im.save(p)
    out = load_training_image(p, background=(0, 255, 0))
    assert out.rgb.mode == "RGB" and out.mask.mode == "L"
    assert out.rgb.getpixel((0, 0)) == (0, 255, 0)  # fully transparent → background
    assert out.rgb.getpixel((10, 10)) == (255, 0, 0)
    r, g, b = out.rgb.getpixel((20, 10))
    assert abs(r) <= 1 and abs(g - 127) <= 1 and abs(b - 128) <= 1
    assert out.mask.getpixel((0, 0)) == 0 and out.mask.getpixel((20, 10)) == 128
    assert out.original_size == (80, 64) and out.has_alpha


def test_opaque_alpha_channel_gives_no_mask(tmp_path):
    p = tmp_path / "o.png"
    Image.new("RGBA", (64, 64), (1, 2, 3, 255)).save(p)
    out = load_training_image(p)
    assert out.mask is None and out.rgb.getpixel((5, 5)) == (1, 2, 3)


def test_la_greyscale_with_alpha(tmp_path):
    im = Image.new("LA", (64, 64), (200, 0))
    im.putpixel((1, 1), (50, 255))
    p = tmp_path / "la.png"
    im.save(p)
    out = load_training_image(p, background=(10, 20, 30))
    assert out.rgb.getpixel((0, 0)) == (10, 20, 30)
    assert out.rgb.getpixel((1, 1)) == (50, 50, 50)
    assert out.mask.getpixel((1, 1)) == 255


def test_palette_with_single_transparent_index(tmp_path):
    im = Image.new("P", (64, 64), 1)
    im.putpalette([0, 0, 0, 255, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    im.putpixel((3, 3), 2)
    p = tmp_path / "p.png"
    im.save(p, transparency=1)
    out = load_training_image(p, background=(255, 255, 255))
    assert out.rgb.getpixel((0, 0)) == (255, 255, 255)
    assert out.rgb.getpixel((3, 3)) == (0, 0, 255)
    assert out.mask.getpixel((0, 0)) == 0 and out.mask.getpixel((3, 3)) == 255


def test_palette_with_partial_alpha_table(tmp_path):
    im = Image.new("P", (64, 64), 0)
    im.putpalette([255, 0, 0] + [0] * 765)
    p = tmp_path / "pa.png"
    im.save(p, transparency=bytes([64]))
    out = load_training_image(p, background=(0, 0, 0))
    assert out.mask.getpixel((0, 0)) == 64
    assert abs(out.rgb.getpixel((0, 0))[0] - 64) <= 1


def test_rgb_colour_key_trns(tmp_path):
    im = Image.new("RGB", (64, 64), (10, 200, 30))
    im.putpixel((0, 0), (1, 2, 3))
    p = tmp_path / "key.png"
    im.save(p, transparency=(10, 200, 30))
    out = load_training_image(p, background=(255, 0, 255))
    assert out.rgb.getpixel((5, 5)) == (255, 0, 255)
    assert out.rgb.getpixel((0, 0)) == (1, 2, 3)
    assert out.mask.getpixel((0, 0)) == 255 and out.mask.getpixel((5, 5)) == 0


def test_grey_colour_key_trns_8_and_16_bit(tmp_path):
    im = Image.new("L", (64, 64), 100)
    im.putpixel((0, 0), 7)
    im.save(tmp_path / "l.png", transparency=100)
    arr = np.full((64, 64), 1000, dtype=np.uint16)
    arr[0, 0] = 65535
    Image.fromarray(arr).save(tmp_path / "l16.png", transparency=1000)
    for name, kept in (("l.png", (7, 7, 7)), ("l16.png", (255, 255, 255))):
        out = load_training_image(tmp_path / name, background=(0, 255, 0))
        assert out.rgb.getpixel((5, 5)) == (0, 255, 0), name
        assert out.rgb.getpixel((0, 0)) == kept, name
        assert out.mask.getpixel((0, 0)) == 255 and out.mask.getpixel((5, 5)) == 0


def test_greyscale_becomes_rgb(tmp_path):
    p = tmp_path / "g.png"
    Image.new("L", (64, 70), 77).save(p)
    out = load_training_image(p)
    assert out.rgb.mode == "RGB" and out.rgb.getpixel((3, 3)) == (77, 77, 77) and out.mask is None


def test_sixteen_bit_greyscale_is_scaled_with_rounding(tmp_path):
    arr = np.full((64, 64), 65535, dtype=np.uint16)
    arr[0, 0] = 0
    arr[0, 1] = 32896  # 128.0 after scaling
    arr[0, 2] = 257  # exactly 1
    arr[0, 3] = 200  # 0.78 rounds to 1 (truncating to the high byte would give 0)
    p = tmp_path / "g16.png"
    Image.fromarray(arr).save(p)
    assert Image.open(p).mode.startswith("I")  # the case under test: Pillow keeps 16 bits
    out = load_training_image(p)
    assert out.rgb.getpixel((0, 0)) == (0, 0, 0)
    assert out.rgb.getpixel((1, 0)) == (128, 128, 128)
    assert out.rgb.getpixel((2, 0)) == (1, 1, 1)
    assert out.rgb.getpixel((3, 0)) == (1, 1, 1)
    assert out.rgb.getpixel((5, 5)) == (255, 255, 255)


def test_sixteen_bit_rgba_png(tmp_path):
    # Pillow cannot write 16-bit colour PNGs, so the file is assembled by hand.
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    px = np.zeros((64, 64, 4), ">u2")
    px[..., 0] = 65535
    px[..., 3] = 32896  # half transparent
    px[0, 0] = (0, 0, 65535, 65535)
    raw = b"".join(b"\0" + px[y].tobytes() for y in range(64))
    p = tmp_path / "rgba16.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 64, 64, 16, 6, 0, 0, 0))
                  + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    out = load_training_image(p, background=(0, 0, 0))
    assert out.rgb.getpixel((0, 0)) == (0, 0, 255)
    assert out.mask.getpixel((5, 5)) == 128 and out.rgb.getpixel((5, 5)) == (128, 0, 0)


def test_cmyk_jpeg_converted_the_same_way_every_time(tmp_path):
    im = Image.new("CMYK", (64, 64), (0, 255, 255, 0))
    p = tmp_path / "cmyk.jpg"
    im.save(p, quality=95)
    a = load_training_image(p)
    b = load_training_image(p)
    assert a.source_mode == "CMYK" and a.rgb.mode == "RGB"
    r, g, bl = a.rgb.getpixel((30, 30))
    assert r > 230 and g < 25 and bl < 25
    assert pixel_digest(a) == pixel_digest(b)


def test_embedded_icc_profile_is_applied(tmp_path):
    # A profile whose "red" primary is sRGB's green: pure red in the file is green on screen.
    icc = rgb_icc_profile(SRGB_G, SRGB_R, SRGB_B)
    p = tmp_path / "icc.png"
    Image.new("RGB", (64, 64), (255, 0, 0)).save(p, icc_profile=icc)
    out = load_training_image(p)
    assert out.colour_path == "icc"
    r, g, b = out.rgb.getpixel((0, 0))
    assert r < 10 and g > 245 and b < 10


def test_embedded_srgb_profile_keeps_colours(tmp_path):
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    p = tmp_path / "srgb.png"
    Image.new("RGBA", (64, 64), (200, 100, 50, 255)).save(p, icc_profile=icc)
    out = load_training_image(p)
    assert out.colour_path == "icc"
    assert all(abs(x - y) <= 2 for x, y in zip(out.rgb.getpixel((1, 1)), (200, 100, 50)))


def test_unusable_icc_profile_is_noted_not_fatal(tmp_path):
    p = tmp_path / "bad_icc.png"
    Image.new("RGB", (64, 64), (9, 9, 9)).save(p, icc_profile=b"not a profile at all" * 10)
    out = load_training_image(p)
    assert out.colour_path == "plain" and out.rgb.getpixel((0, 0)) == (9, 9, 9)
    assert any("ICC" in n for n in out.notes)


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (80, 120), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 80, 60))  # top half red, as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    p = tmp_path / "rot.jpg"
    im.save(p, exif=exif, quality=95)
    out = load_training_image(p)
    assert out.original_size == (120, 80)
    # Stored top is displayed on the right after a clockwise quarter turn.
    assert out.rgb.getpixel((110, 40))[0] > 200 and out.rgb.getpixel((10, 40))[2] > 200
    assert probe_image(p).oriented_size == (120, 80)


def test_truncated_png_is_corrupt_and_named(tmp_path):
    p = tmp_path / "cut.png"
    noise((128, 128)).save(p)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageRejected) as err:
        load_training_image(p)
    assert err.value.code == "corrupt" and "cut.png" in str(err.value)


def test_truncated_jpeg_is_corrupt(tmp_path):
    p = tmp_path / "cut.jpg"
    noise((256, 256)).save(p, quality=90)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageRejected) as err:
        load_training_image(p)
    assert err.value.code == "corrupt" and "cut.jpg" in str(err.value)


def test_png_with_bad_crc_is_corrupt(tmp_path):
    p = tmp_path / "crc.png"
    noise((64, 64)).save(p)
    data = bytearray(p.read_bytes())
    data[-20] ^= 0xFF  # inside the last IDAT, after its CRC was computed
    p.write_bytes(bytes(data))
    with pytest.raises(ImageRejected, match="crc.png"):
        load_training_image(p)


def test_too_small_named_with_size_and_limit_configurable(tmp_path):
    p = tmp_path / "tiny.png"
    Image.new("RGB", (1, 1), (0, 0, 0)).save(p)
    with pytest.raises(ImageRejected) as err:
        load_training_image(p)
    assert err.value.code == "too_small" and "tiny.png" in str(err.value) and "1x1" in str(err.value)
    assert load_training_image(p, min_size=1).rgb.size == (1, 1)


def test_bomb_header_refused_before_decoding(tmp_path):
    p = png_with_header(tmp_path / "bomb.png", 100_000, 100_000)
    with pytest.raises(ImageRejected) as err:
        load_training_image(p)
    assert err.value.code == "too_large" and "bomb.png" in str(err.value)


def test_our_pixel_limit_applies_below_pillows(tmp_path):
    p = png_with_header(tmp_path / "big.png", 9000, 8000)
    with pytest.raises(ImageRejected) as err:
        probe_image(p)
    msg = str(err.value)
    assert err.value.code == "too_large" and "9000x8000" in msg and "72.0 megapixels" in msg
    # The file holds no real pixel data, so passing the probe proves that it decodes nothing.
    assert probe_image(p, max_pixels=80_000_000).size == (9000, 8000)


def test_text_with_image_extension_is_not_an_image(tmp_path):
    p = tmp_path / "fake.png"
    p.write_text("hello")
    with pytest.raises(DatasetError, match="fake.png.*not a PNG"):
        load_training_image(p)


def test_gif_is_named_as_unsupported(tmp_path):
    p = tmp_path / "a.gif"
    Image.new("P", (64, 64)).save(p)
    with pytest.raises(ImageRejected) as err:
        probe_image(p)
    assert err.value.code == "unsupported_image" and "GIF" in str(err.value)


@pytest.mark.parametrize("fmt,ext", [("BMP", "bmp"), ("WEBP", "webp"), ("JPEG", "jpg"), ("PNG", "png")])
def test_supported_formats_load_by_content(tmp_path, fmt, ext):
    # Wrong extension on purpose: the format comes from the bytes.
    p = tmp_path / f"pic.{'dat' if ext != 'png' else 'png'}"
    Image.new("RGB", (64, 64), (0, 128, 255)).save(p, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    out = load_training_image(p)
    assert out.source_format == fmt
    assert all(abs(x - y) <= 3 for x, y in zip(out.rgb.getpixel((8, 8)), (0, 128, 255)))


def test_sniff_does_not_take_text_for_bmp():
    assert sniff_format(b"BMX bike, red, jumping over a ramp") is None
    header = b"BM" + struct.pack("<I", 1000) + b"\0" * 4 + struct.pack("<II", 54, 40)
    assert sniff_format(header) == "BMP"


def test_same_pixels_same_digest_across_formats(tmp_path):
    im = noise((64, 64), seed=3)
    im.save(tmp_path / "a.png")
    im.save(tmp_path / "a.bmp")
    assert pixel_digest(load_training_image(tmp_path / "a.png")) == pixel_digest(load_training_image(tmp_path / "a.bmp"))
    other = noise((64, 64), seed=4)
    other.save(tmp_path / "b.png")
    assert pixel_digest(load_training_image(tmp_path / "b.png")) != pixel_digest(load_training_image(tmp_path / "a.png"))


def test_icc_profile_bytes_roundtrip_is_valid():
    # Guards the helper: a broken profile would make the ICC test pass for the wrong reason.
    prof = ImageCms.ImageCmsProfile(io.BytesIO(rgb_icc_profile(SRGB_R, SRGB_G, SRGB_B)))
    assert prof.profile.xcolor_space.strip() == "RGB"


def test_exif_orientation_turns_the_alpha_mask_with_the_picture(tmp_path):
    # Stored 80x120: top half opaque red, bottom half fully transparent.
    im = Image.new("RGBA", (80, 120), (0, 0, 0, 0))
    im.paste((255, 0, 0, 255), (0, 0, 80, 60))
    exif = Image.Exif()
    exif[0x0112] = 8  # "rotate 90° counter-clockwise to display": the stored top becomes the left
    p = tmp_path / "rot.png"
    im.save(p, exif=exif)
    out = load_training_image(p, background=(0, 0, 255))
    assert out.rgb.size == out.mask.size == out.original_size == (120, 80)
    assert out.mask.getpixel((10, 40)) == 255 and out.mask.getpixel((110, 40)) == 0
    assert out.rgb.getpixel((10, 40)) == (255, 0, 0) and out.rgb.getpixel((110, 40)) == (0, 0, 255)
