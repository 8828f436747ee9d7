"""Write and read the A1111 "infotext": the `parameters` text stored in generated images.

The layout is AUTOMATIC1111's (v1.10.1, `processing.create_infotext` and
`infotext_utils.parse_generation_parameters`), because every tool in the ecosystem
(A1111, Forge, SD.Next, Civitai, ComfyUI savers) reads and writes it::

    <prompt, possibly several lines>
    Negative prompt: <negative prompt, possibly several lines>
    Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, Lora hashes: "a: 0123456789ab"

`parse_infotext` returns exactly what A1111's parser returns with a stock install
(no styles defined, settings at their defaults: infotext_styles="Apply if any",
auto_backcompat=True, use_old_hires_fix_width_height=False, nothing in
infotext_skip_pasting). That includes its quirks, because users compare our output
with A1111's "PNG Info" tab and paste it into A1111:

- values parsed from the text are strings; the defaults A1111 fills in keep A1111's
  types (`"Clip skip": "1"` is a string but `"Hires resize-1": 0` and
  `"Masked area padding": 32` are ints, `"Refiner switch by sampling steps": False`);
- a value that looks like `WxH` becomes two keys, `<key>-1` and `<key>-2`;
- a parameter with an empty value is dropped (A1111's `v[0]` raises and is swallowed);
- if the last line holds fewer than three `key: value` pairs it is prompt text;
- a `Hires prompt` equal to the prompt reads back as "".

Where A1111 itself crashes we do not (see `_restore_old_hires_fix` and
`_attention_weights`); those are the only intended differences.
"""

from __future__ import annotations

import json
import math
import re
from typing import Mapping, Union

from packaging.version import InvalidVersion, Version

from lorastudio.core.errors import InvalidParameter

InfotextValue = Union[str, int, bool]

# A parameter key: a word character, then at least one more word character, space,
# hyphen or slash. A1111 reads keys with exactly this shape, so we refuse to write others.
_KEY = r"\w[\w \-/]+"
_KEY_RE = re.compile(_KEY)

# One `key: value` pair of the last line. The value is either a JSON string (how
# A1111 writes values holding `,` `:` or a newline) or everything up to the next comma.
# Python's \s, \w and \d are Unicode-aware, as they are in A1111.
_PARAM_RE = re.compile(
    r"""
    \s*
    (""" + _KEY + r""")
    :\s*
    (
        "(?:\\.|[^\\"])+"   # JSON string; a backslash always escapes the next char
      | [^,]*               # bare value
    )
    (?:,|$)
    """,
    re.VERBOSE,
)
_IMAGE_SIZE_RE = re.compile(r"^(\d+)x(\d+)$")

_NEGATIVE_PREFIX = "Negative prompt:"

# Infotext `Version` values that switch on A1111's backward-compatibility options.
_V160 = Version("1.6.0")
_V170_TSNR = Version("v1.7.0-225")
_V180 = Version("1.8.0")
_V180_HR_STYLES = Version("1.8.0-139")


def quote(value: object) -> object:
    """A1111's `quote`: JSON-encode a value only when it would break the `k: v, k: v` line."""
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return value
    return json.dumps(value, ensure_ascii=False)


def unquote(text: str) -> str:
    """A1111's `unquote`: decode a JSON string value; anything else is returned unchanged."""
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        decoded = json.loads(text)
    except ValueError:
        return text
    return decoded if isinstance(decoded, str) else text


def format_infotext(prompt: str, negative_prompt: str, params: Mapping[str, object]) -> str:
    """Build the infotext exactly as A1111's `create_infotext` lays it out.

    `params` keeps the caller's order; None values are skipped; a value equal to its
    key is written as the bare key (A1111 does this for flag-like entries).
    Values are written with `str()` (so 7.0 becomes "7.0"), JSON-quoted by `quote`.
    """
    for key in params:
        if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
            raise InvalidParameter(
                "infotext key", key,
                "A1111 only reads keys that start with a letter/digit/underscore and then use "
                "letters, digits, underscores, spaces, '-' or '/' (at least 2 characters)",
            )
    params_text = ", ".join(
        key if key == value else f"{key}: {quote(value)}"
        for key, value in params.items()
        if value is not None
    )
    negative_text = f"\n{_NEGATIVE_PREFIX} {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative_text}\n{params_text}".strip()


def parse_infotext(text: str) -> dict[str, InfotextValue]:
    """Parse an infotext into the dict A1111's `parse_generation_parameters` returns.

    Key order matches A1111's too (parameters first, then Prompt/Negative prompt, then
    the defaults), so `json.dumps` of the result equals A1111's.
    """
    res: dict[str, InfotextValue] = {}

    *lines, last_line = text.strip().split("\n")
    if len(_PARAM_RE.findall(last_line)) < 3:
        lines.append(last_line)
        last_line = ""
    prompt, negative_prompt = _split_prompts(lines)

    for key, value in _PARAM_RE.findall(last_line):
        if not value:
            continue
        if value[0] == '"' and value[-1] == '"':
            value = unquote(value)
        size = _IMAGE_SIZE_RE.match(value)
        if size is not None:
            res[f"{key}-1"] = size.group(1)
            res[f"{key}-2"] = size.group(2)
        else:
            res[key] = value

    _blank_hires_prompts_equal_to_main(res, prompt, negative_prompt)

    res["Prompt"] = prompt
    res["Negative prompt"] = negative_prompt

    # A1111 omits Clip skip from the infotext when it is 1.
    res.setdefault("Clip skip", "1")

    hypernet = res.get("Hypernet")
    if hypernet is not None:
        res["Prompt"] = f"{res['Prompt']}<hypernet:{hypernet}:{res.get('Hypernet strength', '1.0')}>"

    if "Hires resize-1" not in res:
        res["Hires resize-1"] = 0
        res["Hires resize-2"] = 0
    res.setdefault("Hires sampler", "Use same sampler")
    res.setdefault("Hires schedule type", "Use same scheduler")
    res.setdefault("Hires checkpoint", "Use same checkpoint")
    res.setdefault("Hires prompt", "")
    res.setdefault("Hires negative prompt", "")
    res.setdefault("Mask mode", "Inpaint masked")
    res.setdefault("Masked content", "original")
    res.setdefault("Inpaint area", "Whole picture")
    res.setdefault("Masked area padding", 32)

    _restore_old_hires_fix(res)

    res.setdefault("RNG", "GPU")
    res.setdefault("Schedule type", "Automatic")
    res.setdefault("Schedule max sigma", 0)
    res.setdefault("Schedule min sigma", 0)
    res.setdefault("Schedule rho", 0)
    res.setdefault("VAE Encoder", "Full")
    res.setdefault("VAE Decoder", "Full")
    res.setdefault("FP8 weight", "Disable")
    if "Cache FP16 weight for LoRA" not in res and res["FP8 weight"] != "Disable":
        res["Cache FP16 weight for LoRA"] = False

    if "Emphasis" not in res and (_uses_emphasis(prompt) or _uses_emphasis(negative_prompt)):
        res["Emphasis"] = "Original"
    res.setdefault("Refiner switch by sampling steps", False)

    _apply_version_backcompat(res)
    return res


def _split_prompts(lines: list[str]) -> tuple[str, str]:
    prompt = ""
    negative = ""
    in_negative = False
    for line in lines:
        line = line.strip()
        # Every line that starts with the prefix loses it, not only the first one.
        if line.startswith(_NEGATIVE_PREFIX):
            in_negative = True
            line = line[len(_NEGATIVE_PREFIX):].strip()
        if in_negative:
            negative += ("" if negative == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    return prompt, negative


def _blank_hires_prompts_equal_to_main(res: dict, prompt: str, negative_prompt: str) -> None:
    """A1111 >= 1.8.0-139 reads a Hires prompt equal to the main one as "" ("same as prompt").

    This is the styles step of A1111's parser with no styles defined.
    """
    if "Hires prompt" not in res and "Hires negative prompt" not in res:
        return
    version = _parse_version(res.get("Version"))
    if version is not None and not version > _V180_HR_STYLES:
        return
    hr_prompt = res.get("Hires prompt", prompt)
    hr_negative = res.get("Hires negative prompt", negative_prompt)
    res["Hires prompt"] = "" if hr_prompt == prompt else hr_prompt
    res["Hires negative prompt"] = "" if hr_negative == negative_prompt else hr_negative


def _restore_old_hires_fix(res: dict) -> None:
    """Convert the pre-2023 `First pass size` hires fix into Size + Hires resize.

    A1111 raises here on a non-numeric size or a 0x0 Size; we leave the values as read.
    """
    first_w = res.get("First pass size-1")
    first_h = res.get("First pass size-2")
    if first_w is None or first_h is None:
        return
    try:
        first_w, first_h = int(first_w), int(first_h)
        width = int(res.get("Size-1", 512))
        height = int(res.get("Size-2", 512))
        if first_w == 0 or first_h == 0:
            first_w, first_h = _old_hires_first_pass_size(width, height)
    except (ValueError, ZeroDivisionError):
        return
    res["Size-1"] = first_w
    res["Size-2"] = first_h
    res["Hires resize-1"] = width
    res["Hires resize-2"] = height


def _old_hires_first_pass_size(width: int, height: int) -> tuple[int, int]:
    # The pre-2023 hires fix sampled the first pass at about 512*512 pixels, in steps of 64.
    scale = math.sqrt(512 * 512 / (width * height))
    return math.ceil(scale * width / 64) * 64, math.ceil(scale * height / 64) * 64


def _parse_version(text: object) -> Version | None:
    """A1111's infotext version: 'v1.10.1-5-gabcdef' compares as 'v1.10.1-5' (a post-release)."""
    if not isinstance(text, str):
        return None
    m = re.match(r"([^-]+-[^-]+)-.*", text)
    if m:
        text = m.group(1)
    try:
        return Version(text)
    except InvalidVersion:
        return None


def _apply_version_backcompat(res: dict) -> None:
    """Flags A1111 sets so images from older versions regenerate the same way."""
    version = _parse_version(res.get("Version"))
    if version is None:
        return
    if version < _V160 and "[" in res.get("Prompt", ""):
        res["Old prompt editing timelines"] = True
    if version < _V160 and res.get("Sampler", "") in ("DDIM", "PLMS"):
        res["Pad conds v0"] = True
    if version < _V170_TSNR:
        res["Downcast alphas_cumprod"] = True
    if version < _V180 and res.get("Refiner"):
        res["Refiner switch by sampling steps"] = True


# Tokens of A1111's emphasis syntax, in priority order.
_ATTENTION_TOKEN_RE = re.compile(
    r"""
      \\[()\[\]\\]?                          # escaped bracket or backslash; or a lone backslash
    | [(\[]                                  # opening bracket
    | :\s*(?P<weight>[+-]?[.\d]+)\s*\)       # explicit weight closing a round bracket
    | [)\]]                                  # closing bracket
    | [^\\()\[\]:]+                          # plain text
    | :                                      # any other colon
    """,
    re.VERBOSE,
)
_BREAK_RE = re.compile(r"\s*\bBREAK\b\s*", re.S)
_ROUND_MULTIPLIER = 1.1
_SQUARE_MULTIPLIER = 1 / 1.1


def _uses_emphasis(prompt: str) -> bool:
    """True when some chunk of the prompt gets a weight other than 1 (BREAK markers aside).

    A1111 decides this from its own attention parser, so weights are computed the same
    way, float rounding included: `[(x)]` is 1.1 * (1/1.1), which happens to be 1.0.
    """
    return any(weight != 1.0 and chunk != "BREAK" for chunk, weight in _attention_weights(prompt))


def _attention_weights(text: str) -> list[list]:
    """[chunk, weight] pairs as A1111's `parse_prompt_attention` computes them.

    Unlike A1111, an unparseable explicit weight such as `(x:1.2.3)` is read as plain
    text instead of raising.
    """
    chunks: list[list] = []
    open_round: list[int] = []
    open_square: list[int] = []

    def scale_from(start: int, multiplier: float) -> None:
        for chunk in chunks[start:]:
            chunk[1] *= multiplier

    for m in _ATTENTION_TOKEN_RE.finditer(text):
        token = m.group(0)
        weight = _to_float(m.group("weight"))
        if token.startswith("\\"):
            chunks.append([token[1:], 1.0])
        elif token == "(":
            open_round.append(len(chunks))
        elif token == "[":
            open_square.append(len(chunks))
        elif weight is not None and open_round:
            scale_from(open_round.pop(), weight)
        elif token == ")" and open_round:
            scale_from(open_round.pop(), _ROUND_MULTIPLIER)
        elif token == "]" and open_square:
            scale_from(open_square.pop(), _SQUARE_MULTIPLIER)
        else:
            for i, part in enumerate(_BREAK_RE.split(token)):
                if i > 0:
                    chunks.append(["BREAK", -1])
                chunks.append([part, 1.0])

    # Unclosed brackets still apply to everything after them.
    for start in open_round:
        scale_from(start, _ROUND_MULTIPLIER)
    for start in open_square:
        scale_from(start, _SQUARE_MULTIPLIER)

    i = 0
    while i + 1 < len(chunks):
        if chunks[i][1] == chunks[i + 1][1]:
            chunks[i][0] += chunks[i + 1][0]
            chunks.pop(i + 1)
        else:
            i += 1
    return chunks


def _to_float(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return None
