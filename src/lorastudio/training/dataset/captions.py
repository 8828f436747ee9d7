"""Caption files, the trigger word, and the per-step caption augmentations.

Captions are A1111 prompt text: a trigger word such as ``Delta(mon)`` is written escaped
(``Delta\\(mon\\)``) so that the same string can be pasted into a prompt, and the training loop
reads captions with ``lorastudio.core.prompt_syntax`` exactly as generation reads prompts.
"""

from __future__ import annotations

import codecs
import random
import re
import unicodedata
from pathlib import Path

from lorastudio.core.errors import DatasetError
from lorastudio.core.prompt_syntax import escape_prompt_text

MAX_CAPTION_BYTES = 256 * 1024

_BOMS = (
    # UTF-32 first: its little-endian BOM starts with UTF-16's.
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                     *(f"LPT{i}" for i in range(1, 10))}
_FILENAME_BAD = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]')


def decode_caption_bytes(data: bytes, name: object = "caption") -> str:
    """Decode a caption file: BOM-marked UTF-8/16/32, else strict UTF-8, else CP932 (Shift-JIS).

    CP932 is tried second because Japanese text in it is almost never valid UTF-8, while the
    reverse guess would turn UTF-8 into mojibake without any error.
    """
    for bom, enc in _BOMS:
        if data.startswith(bom):
            try:
                return data[len(bom):].decode(enc)
            except UnicodeDecodeError as exc:
                raise DatasetError(f"{name}: starts with a {enc.upper()} byte-order mark but is not valid "
                                   f"{enc.upper()} (byte {exc.start + len(bom)})") from None
    for enc in ("utf-8", "cp932"):
        try:
            text = data.decode(enc)
        except UnicodeDecodeError:
            continue
        if enc == "cp932" and _implausible(text):
            continue
        if "\x00" in text:
            raise DatasetError(f"{name}: contains NUL bytes (UTF-16 without a byte-order mark?); "
                               "save it as UTF-8")
        return text
    raise DatasetError(f"{name}: is neither UTF-8 nor Shift-JIS (CP932) text; save it as UTF-8")


def _implausible(text: str) -> bool:
    # Python's CP932 maps stray bytes 0x80, 0xA0, 0xFD-0xFF to control and private-use
    # characters, so binary junk "decodes"; real Shift-JIS captions contain neither.
    return any((ord(c) < 32 and c not in "\t\n\r") or 0x7F <= ord(c) <= 0x9F or 0xE000 <= ord(c) <= 0xF8FF
               for c in text)


def read_caption_file(path: str | Path, name: object | None = None) -> str:
    """Read and normalise a caption file; raises DatasetError naming the file (as `name` if given)."""
    path = Path(path)
    name = path if name is None else name
    try:
        size = path.stat().st_size
        if size > MAX_CAPTION_BYTES:
            raise DatasetError(f"{name}: caption file is {size} bytes; captions are a line of tags, "
                               f"at most {MAX_CAPTION_BYTES} bytes")
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{name}: cannot read the caption ({exc.strerror or exc})") from None
    return normalize_caption(decode_caption_bytes(data, name))


def split_tags(caption: str) -> list[str]:
    """Split on commas that are outside brackets and not escaped; tags come back stripped.

    ``(red hat, blue scarf:1.2)`` stays one tag, so shuffling never breaks emphasis syntax.
    """
    tags: list[str] = []
    depth = 0
    start = 0
    i = 0
    while i < len(caption):
        c = caption[i]
        if c == "\\":
            i += 2
            continue
        if c in "([":
            depth += 1
        elif c in ")]":
            depth = max(0, depth - 1)
        elif c == "," and depth == 0:
            tags.append(caption[start:i])
            start = i + 1
        i += 1
    tags.append(caption[start:])
    return [t.strip() for t in tags if t.strip()]


def normalize_caption(text: str) -> str:
    """One line of ``tag, tag, tag``: line breaks separate tags, whitespace runs become one space.

    NFC-normalised so that the same word typed on macOS (decomposed) and Windows (composed)
    matches; full-width spaces count as whitespace.
    """
    text = unicodedata.normalize("NFC", text.replace("\ufeff", ""))
    tags: list[str] = []
    for line in text.splitlines():
        for tag in split_tags(line):
            tag = " ".join(tag.split())
            if tag:
                tags.append(tag)
    return ", ".join(tags)


def _contains_word(text: str, word: str) -> bool:
    # Whole word, case-sensitive: "DeltamonStamp" is not found inside "DeltamonStamps".
    pattern = r"(?<![\w\\])" + re.escape(word) + r"(?!\w)"
    return re.search(pattern, text) is not None


def ensure_trigger(caption: str, trigger_word: str) -> str:
    """Return the caption with the (escaped) trigger word as its first tag.

    A tag equal to the trigger, escaped or as typed, is moved to the front so that
    ``keep_tokens`` protects it from shuffling; a trigger used as a word inside a longer tag
    ("a DeltamonStamp waving") is left where it is; otherwise the trigger is prepended.
    """
    escaped = escape_prompt_text(trigger_word)
    tags = split_tags(caption)
    if any(t in (escaped, trigger_word) for t in tags):
        rest = [t for t in tags if t not in (escaped, trigger_word)]
        return ", ".join([escaped, *rest])
    if _contains_word(caption, escaped):
        return caption
    return ", ".join([escaped, *tags])


def default_caption(trigger_word: str, class_word: str | None = None) -> str:
    """Caption for a picture without a caption file: ``DeltamonStamp, sticker``."""
    parts = [escape_prompt_text(trigger_word)]
    if class_word:
        parts.append(escape_prompt_text(class_word))
    return ", ".join(parts)


def augment_caption(
    caption: str,
    rng: random.Random,
    *,
    dropout: float = 0.0,
    shuffle: bool = False,
    keep_tokens: int = 1,
) -> str:
    """The caption one training step sees. Pure: the result depends only on the arguments.

    Dropout gives the empty caption (the step trains the unconditional case, as kohya's
    caption_dropout_rate does). Shuffling permutes the tags after the first `keep_tokens`.
    The generator is drawn from the same number of times whatever the caption, so one seed
    gives the same sequence of random numbers for every item.
    """
    if not 0.0 <= dropout <= 1.0:
        raise ValueError(f"dropout={dropout!r}: must be within 0..1")
    draw = rng.random()
    shuffle_seed = rng.getrandbits(64)
    if dropout > 0.0 and draw < dropout:
        return ""
    if not shuffle:
        return caption
    tags = split_tags(caption)
    keep = max(0, keep_tokens)
    head, tail = tags[:keep], tags[keep:]
    random.Random(shuffle_seed).shuffle(tail)
    return ", ".join(head + tail)


def safe_filename(word: str, *, max_bytes: int = 120, fallback: str = "lora") -> str:
    """A file-name form of the trigger word for output names: ``DeltamonStamp`` → ``DeltamonStamp``.

    Non-ASCII letters are kept (``デルタモン`` stays); path separators, characters Windows
    forbids, control characters and leading/trailing dots and spaces are removed; whitespace
    becomes ``_``; Windows device names get a ``_`` suffix; never empty.
    """
    name = unicodedata.normalize("NFC", word)
    name = _FILENAME_BAD.sub("", name)
    name = "_".join(name.split())
    name = name.strip(". _")
    if name.split(".")[0].upper() in _WINDOWS_RESERVED:
        name += "_"
    encoded = name.encode("utf-8")
    if len(encoded) > max_bytes:
        name = encoded[:max_bytes].decode("utf-8", errors="ignore").rstrip(". _")
    return name or fallback
