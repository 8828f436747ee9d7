"""Turn one picture file into the RGB image (and alpha mask) that training sees.

Every input mode goes through one fixed path, so the same file always gives the same pixels:
EXIF orientation (Pillow's exif_transpose) → split off alpha → colour to sRGB (embedded ICC
profile through LittleCMS when there is one) → composite onto the background colour.
"""

from __future__ import annotations

import functools
import hashlib
import io
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageOps

from lorastudio.core.errors import DatasetError

SUPPORTED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP")
# Camera JPEGs with a second (preview) picture come back from the JPEG opener as format "MPO".
_PIL_FORMATS = ["PNG", "JPEG", "WEBP", "BMP"]
DEFAULT_MAX_PIXELS = 64_000_000
DEFAULT_MIN_SIZE = 64

_BMP_DIB_SIZES = (12, 16, 40, 52, 56, 64, 108, 124)


class ImageRejected(DatasetError):
    """One picture cannot be used; `code` is the short name the dataset report shows."""

    def __init__(self, path: object, code: str, why: str):
        self.path, self.code, self.why = path, code, why
        super().__init__(f"{path}: {why}")


@dataclass(frozen=True)
class ImageInfo:
    """What the header says, read without decoding pixels."""

    format: str
    size: tuple[int, int]  # as stored, before EXIF orientation
    mode: str
    orientation: int

    @property
    def oriented_size(self) -> tuple[int, int]:
        w, h = self.size
        return (h, w) if self.orientation in (5, 6, 7, 8) else (w, h)


@dataclass(frozen=True)
class PreparedImage:
    path: Path
    rgb: Image.Image  # mode RGB, sRGB, transparency already composited onto the background
    mask: Image.Image | None  # mode L alpha, None when the file has no (non-opaque) transparency
    original_size: tuple[int, int]  # width, height as displayed (after EXIF orientation)
    source_format: str
    source_mode: str
    colour_path: str  # "icc" when an embedded profile was applied, else "plain"
    notes: tuple[str, ...] = field(default=())

    @property
    def has_alpha(self) -> bool:
        return self.mask is not None


def sniff_format(head: bytes) -> str | None:
    """Name the picture format from the first bytes of a file; None when it is not a picture.

    Supported formats come back as Pillow names; others (GIF, TIFF, ...) are named so that the
    report can say what the file is rather than "unknown".
    """
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if _looks_like_bmp(head):
        return "BMP"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if len(head) >= 12 and head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"avif", b"avis"):
            return "AVIF"
        if brand in (b"heic", b"heix", b"hevc", b"mif1", b"msf1"):
            return "HEIC"
    if head.startswith(b"8BPS"):
        return "PSD"
    if head.startswith(b"\xff\x0a") or head.startswith(b"\x00\x00\x00\x0cJXL "):
        return "JPEG XL"
    if head.startswith(b"\x00\x00\x01\x00"):
        return "ICO"
    return None


def _looks_like_bmp(head: bytes) -> bool:
    # "BM" alone also starts text such as a caption "BMX bike"; the reserved zero fields and a
    # known DIB header size rule that out.
    if len(head) < 18 or head[:2] != b"BM":
        return False
    reserved = head[6:10]
    dib_size = struct.unpack("<I", head[14:18])[0]
    return reserved == b"\x00\x00\x00\x00" and dib_size in _BMP_DIB_SIZES


def _open(path: Path) -> Image.Image:
    # Pillow's own bomb guard warns from 89 MP; our limit (checked by the caller) is the one that
    # counts, so its warning is silenced here. Its hard error (>179 MP) is turned into ours.
    # `formats=` only finds plugins already registered; init() registers them all once.
    Image.init()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(path, formats=_PIL_FORMATS)


def probe_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Read the header only: format, size, mode; refuse pictures above `max_pixels`."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(32)
    except OSError as exc:
        raise ImageRejected(path, "unreadable", f"cannot read the file ({exc.strerror or exc})") from None
    fmt = sniff_format(head)
    if fmt is None:
        raise ImageRejected(path, "not_an_image", "is not a PNG, JPEG, WebP or BMP picture")
    if fmt not in SUPPORTED_FORMATS:
        raise ImageRejected(path, "unsupported_image",
                            f"{fmt} pictures are not supported; convert it to PNG (or JPEG/WebP/BMP)")
    try:
        im = _open(path)
    except Image.DecompressionBombError as exc:
        raise ImageRejected(path, "too_large", f"declares an enormous size ({exc}); refusing to decode it") from None
    except (OSError, SyntaxError, ValueError, struct.error, EOFError) as exc:
        raise ImageRejected(path, "corrupt", f"{fmt} header cannot be read ({exc})") from None
    with im:
        w, h = im.size
        try:
            orientation = int(im.getexif().get(0x0112, 1) or 1)
        except Exception:  # noqa: BLE001 - a broken EXIF block must not hide the picture itself
            orientation = 1
        info = ImageInfo(format=fmt, size=(w, h), mode=im.mode,
                         orientation=orientation if 1 <= orientation <= 8 else 1)
    if w <= 0 or h <= 0:
        raise ImageRejected(path, "corrupt", f"declares an empty size {w}x{h}")
    if w * h > max_pixels:
        raise ImageRejected(
            path, "too_large",
            f"is {w}x{h} = {w * h / 1e6:.1f} megapixels, above the limit of {max_pixels / 1e6:.1f} "
            "megapixels (decompression-bomb guard; raise max_pixels if the picture is genuine)")
    return info


def load_training_image(
    path: str | Path,
    background: tuple[int, int, int] = (255, 255, 255),
    *,
    min_size: int = DEFAULT_MIN_SIZE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    verify: bool = True,
) -> PreparedImage:
    """Decode a picture fully and bring it to sRGB RGB plus an optional alpha mask.

    Raises ImageRejected (a DatasetError) naming the file for: not a supported picture, above
    `max_pixels` (checked from the header, before any pixel is decoded), shortest side below
    `min_size` (0 disables), corrupt or truncated data. `verify=False` skips the PNG CRC pass,
    for files that a dataset check has already accepted.
    """
    path = Path(path)
    info = probe_image(path, max_pixels=max_pixels)
    ow, oh = info.oriented_size
    if min_size and min(ow, oh) < min_size:
        raise ImageRejected(path, "too_small",
                            f"is {ow}x{oh}; the shortest side must be at least {min_size} px")
    im = _decode(path, info, verify)
    notes: list[str] = []
    try:
        if getattr(im, "n_frames", 1) > 1:
            notes.append(f"has {im.n_frames} frames; only the first is used")
        upright = _upright(im)
        colour, alpha = _split_alpha(upright)
        colour, colour_path = _to_srgb(colour, upright.info.get("icc_profile"), notes)
        if colour is im:
            colour = im.copy()  # the file is closed below; keep the pixels
    finally:
        im.close()
    if alpha is not None and alpha.getextrema() == (255, 255):
        alpha = None
    if alpha is None:
        rgb = colour
    else:
        rgb = Image.new("RGB", colour.size, tuple(background))
        rgb.paste(colour, (0, 0), alpha)
    return PreparedImage(path=path, rgb=rgb, mask=alpha, original_size=rgb.size, source_format=info.format,
                         source_mode=info.mode, colour_path=colour_path, notes=tuple(notes))


def _upright(im: Image.Image) -> Image.Image:
    """The picture as displayed: Pillow applies the EXIF orientation (and drops the tag)."""
    try:
        return ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not hide the picture itself
        return im


def _decode(path: Path, info: ImageInfo, verify: bool) -> Image.Image:
    try:
        if verify and info.format == "PNG":
            # verify() checks every chunk CRC, which load() skips for ancillary chunks.
            with _open(path) as probe:
                probe.verify()
        im = _open(path)
        im.load()
        return im
    except Image.DecompressionBombError as exc:
        raise ImageRejected(path, "too_large", str(exc)) from None
    except (OSError, SyntaxError, ValueError, struct.error, EOFError, IndexError) as exc:
        why = str(exc) or type(exc).__name__
        raise ImageRejected(path, "corrupt", f"is corrupt or truncated ({why})") from None


def _split_alpha(im: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    """Separate colour (mode RGB, L or CMYK) from transparency (mode L, or None)."""
    mode = im.mode
    trns = im.info.get("transparency")
    if mode in ("PA", "RGBa", "La"):
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode == "RGBA":
        return im.convert("RGB"), im.getchannel("A")
    if mode == "LA":
        return im.convert("L"), im.getchannel("A")
    if mode == "P":
        if trns is None:
            return im.convert("RGB"), None
        # Pillow maps the palette's tRNS table (or single index) onto an alpha channel.
        rgba = im.convert("RGBA")
        return rgba.convert("RGB"), rgba.getchannel("A")
    if mode == "1":
        return im.convert("L"), None
    if mode.startswith("I"):
        arr = np.asarray(im).astype(np.int64)
        alpha = _key_alpha(arr, trns)
        # PNG stores 16-bit samples; scale with rounding so 65535 → 255 and 32896 → 128 exactly.
        grey = (np.clip(arr, 0, 65535) * 255 + 32767) // 65535
        return Image.fromarray(grey.astype(np.uint8), "L"), alpha
    if mode in ("L", "RGB"):
        if trns is None or isinstance(trns, bytes):
            return im, None
        return im, _key_alpha(np.asarray(im), trns)
    if mode == "CMYK":
        return im, None
    if mode == "F":
        arr = np.asarray(im)
        top = float(arr.max()) if arr.size else 1.0
        scale = 255.0 if top <= 1.0 else 255.0 / max(top, 1.0)
        return Image.fromarray(np.clip(arr * scale + 0.5, 0, 255).astype(np.uint8), "L"), None
    return im.convert("RGB"), None


def _key_alpha(arr: np.ndarray, key: object) -> Image.Image | None:
    """Alpha for a colour-key tRNS chunk: the one listed colour is transparent, all else opaque."""
    if key is None:
        return None
    if arr.ndim == 3:
        if not isinstance(key, tuple) or len(key) < arr.shape[2]:
            return None
        hit = np.all(arr == np.asarray(key[: arr.shape[2]], dtype=arr.dtype), axis=2)
    else:
        if not isinstance(key, int):
            return None
        hit = arr == key
    return Image.fromarray(np.where(hit, 0, 255).astype(np.uint8), "L")


_ICC_SPACE_TO_MODE = {"RGB": "RGB", "GRAY": "L", "CMYK": "CMYK"}


@functools.lru_cache(maxsize=1)
def _srgb_profile() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


@functools.lru_cache(maxsize=32)
def _transform(icc: bytes, in_mode: str) -> ImageCms.ImageCmsTransform | str:
    """Transform from an embedded profile to sRGB, or a reason why it cannot be used."""
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    except (OSError, ImageCms.PyCMSError, ValueError, TypeError) as exc:
        return f"embedded ICC profile is unreadable ({exc}); colours used as they are"
    space = (profile.profile.xcolor_space or "").strip()
    if _ICC_SPACE_TO_MODE.get(space) != in_mode:
        return f"embedded ICC profile is for {space or 'an unknown colour space'}, not {in_mode}; ignored"
    try:
        # Perceptual intent, fixed, so that the same file always gives the same pixels.
        return ImageCms.buildTransform(profile, _srgb_profile(), in_mode, "RGB",
                                       renderingIntent=ImageCms.Intent.PERCEPTUAL)
    except (ImageCms.PyCMSError, OSError, ValueError) as exc:
        return f"embedded ICC profile cannot be applied ({exc}); colours used as they are"


def _to_srgb(colour: Image.Image, icc: bytes | None, notes: list[str]) -> tuple[Image.Image, str]:
    if icc:
        transform = _transform(bytes(icc), colour.mode)
        if isinstance(transform, str):
            notes.append(transform)
        else:
            return ImageCms.applyTransform(colour, transform), "icc"
    return (colour if colour.mode == "RGB" else colour.convert("RGB")), "plain"


def pixel_digest(image: PreparedImage) -> str:
    """Hash of what training sees (pixels, size, mask): equal for a PNG and its re-save as BMP."""
    h = hashlib.sha256()
    h.update(f"{image.rgb.size[0]}x{image.rgb.size[1]}".encode())
    h.update(image.rgb.tobytes())
    if image.mask is not None:
        h.update(b"mask")
        h.update(image.mask.tobytes())
    return h.hexdigest()


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
