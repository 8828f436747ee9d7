"""AUTOMATIC1111 prompt syntax: emphasis, BREAK, ``<lora:...>`` tags and 75-token chunking.

Everything here must give the same result as A1111 for the same prompt, because users paste
prompts (and infotext) from A1111 and expect the same conditioning. Where A1111 has a quirk
that changes the image (weights multiplied in a fixed float order, a bracketed BREAK losing its
meaning), it is reproduced on purpose; the few places that differ are marked "Differs from A1111".

Pure Python: the tokenizer is passed in, so this module never imports torch or transformers.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

from lorastudio.core.errors import InvalidParameter

__all__ = [
    "BREAK_WEIGHT",
    "MAX_EMPHASIS_WEIGHT",
    "MAX_LORA_WEIGHT",
    "LoraTag",
    "PromptChunk",
    "chunk_prompt",
    "escape_prompt_text",
    "extract_lora_tags",
    "parse_prompt_attention",
]

ROUND_MULTIPLIER = 1.1
# Computed as A1111 does (not 0.909...) so products are bit-identical to its weights.
SQUARE_MULTIPLIER = 1 / 1.1
BREAK_WEIGHT = -1.0
# Emphasis is clamped to ±MAX_EMPHASIS_WEIGHT (see parse_prompt_attention): 48 nested "(" or
# "(x:100)" reach it, far past any weight that still draws the subject; 10,000 nested "(" or
# "(x:99…9)" would otherwise be an infinite weight and a black picture.
MAX_EMPHASIS_WEIGHT = 100.0
# `<lora:name:w>` tags (and the sum of tags naming the same file) are refused past ±MAX_LORA_WEIGHT:
# LoRAs are made for weights around 1 (slider LoRAs use a few units either way); past 10 the
# picture is noise, and 1e39 overflows the model's weights.
MAX_LORA_WEIGHT = 10.0

_ESCAPABLE = frozenset("()[]\\")
_SPECIAL = frozenset("()[]\\:")
# Whitespace around the number is accepted since A1111 1.7 ("(x: 1.2 )").
_WEIGHT_CLOSE = re.compile(r":\s*([+-]?[.\d]+)\s*\)")
_BREAK = re.compile(r"\s*\bBREAK\b\s*")


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """Split ``text`` into (text, weight) runs exactly as A1111's ``parse_prompt_attention``.

    ``(x)`` ×1.1, ``[x]`` ÷1.1, ``(x:1.4)`` ×1.4, nesting multiplies, ``\\( \\) \\[ \\] \\\\``
    are literals and any other backslash is dropped. A closing bracket with nothing open is
    plain text; brackets left open apply to everything after them. ``BREAK`` as a word gives
    ``("BREAK", -1.0)``; inside brackets that marker is multiplied like any run, exactly as in
    A1111, so a bracketed BREAK no longer forces a new chunk. Adjacent runs with equal weights
    are merged; empty text gives ``[("", 1.0)]``.

    Differs from A1111: a weight that matches A1111's pattern but is not a number, such as
    ``(x:1.2.3)``, raises ValueError there; here the ``:`` is read as text and the ``)`` closes
    the bracket with ×1.1, so no user text can make the parser fail. Every bracket's factor and
    every product are clamped to ±MAX_EMPHASIS_WEIGHT (100), so weights stay finite: A1111 would
    reach infinity (and NaN, for ``((x:0):1e999)``) and draw a black picture. Prompts whose
    weights never pass ±100 on the way, which is every prompt that draws something, parse
    bit-identically to A1111.
    """
    runs: list[list] = []  # [text, weight]; mutable because closing brackets rescale in place
    round_open: list[int] = []
    square_open: list[int] = []

    def scale_from(start: int, factor: float) -> None:
        # Weights are rescaled one bracket at a time, in closing order, so the float products
        # (e.g. 1.5730000000000004 for "((x:1.3))" inside "(") match A1111 bit for bit.
        factor = _clamp(factor)
        for run in runs[start:]:
            run[1] = _clamp(run[1] * factor)

    def add_text(chunk: str) -> None:
        parts = _BREAK.split(chunk)
        runs.append([parts[0], 1.0])
        for part in parts[1:]:
            runs.append(["BREAK", BREAK_WEIGHT])
            runs.append([part, 1.0])

    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            escaped = text[i + 1 : i + 2]
            if escaped and escaped in _ESCAPABLE:
                runs.append([escaped, 1.0])
                i += 2
            else:
                # A1111 keeps an empty run here; it matters because an empty run with a
                # different weight can sit between two runs and stop them merging.
                runs.append(["", 1.0])
                i += 1
        elif c == "(":
            round_open.append(len(runs))
            i += 1
        elif c == "[":
            square_open.append(len(runs))
            i += 1
        elif c == ":":
            m = _WEIGHT_CLOSE.match(text, i)
            if m is None:
                add_text(":")
                i += 1
            elif not round_open:
                # Without an open "(" the whole ":1.2)" is one literal run in A1111.
                add_text(m.group(0))
                i = m.end()
            else:
                factor = _to_float(m.group(1))
                if factor is None:
                    add_text(":")
                    i += 1
                else:
                    scale_from(round_open.pop(), factor)
                    i = m.end()
        elif c == ")" and round_open:
            scale_from(round_open.pop(), ROUND_MULTIPLIER)
            i += 1
        elif c == "]" and square_open:
            scale_from(square_open.pop(), SQUARE_MULTIPLIER)
            i += 1
        elif c in ")]":
            add_text(c)
            i += 1
        else:
            j = i + 1
            while j < n and text[j] not in _SPECIAL:
                j += 1
            add_text(text[i:j])
            i = j

    # Unclosed brackets: all "(" first (outermost first), then all "[", as A1111 does.
    for start in round_open:
        scale_from(start, ROUND_MULTIPLIER)
    for start in square_open:
        scale_from(start, SQUARE_MULTIPLIER)

    if not runs:
        return [("", 1.0)]

    merged: list[list] = [runs[0]]
    for run in runs[1:]:
        # `==` (not isclose) on purpose: A1111 merges only exactly equal weights,
        # which also means 0.0 merges with -0.0 and NaN never merges.
        if merged[-1][1] == run[1]:
            merged[-1][0] += run[0]
        else:
            merged.append(run)
    return [(t, float(w)) for t, w in merged]


def _clamp(weight: float) -> float:
    return max(-MAX_EMPHASIS_WEIGHT, min(MAX_EMPHASIS_WEIGHT, weight))


def _to_float(number: str) -> float | None:
    try:
        return float(number)
    except ValueError:
        return None


_ESCAPE_TARGET = re.compile(r"[\\()\[\]]|\bBREAK\b")


def escape_prompt_text(text: str) -> str:
    """Escape ``text`` so that ``parse_prompt_attention`` reads it literally with weight 1.0.

    ``\\ ( ) [ ]`` get a backslash. A standalone ``BREAK`` cannot be escaped with a backslash
    in A1111's grammar, so a lone backslash is put inside it (``BREA\\K``): A1111 drops a
    backslash that escapes nothing, which leaves the word intact but no longer a separator.
    """

    def escape(m: re.Match[str]) -> str:
        found = m.group(0)
        return "BREA\\K" if found == "BREAK" else "\\" + found

    return _ESCAPE_TARGET.sub(escape, text)


@dataclass(frozen=True)
class LoraTag:
    """One ``<lora:name:te:unet>`` tag; ``unet_weight`` defaults to ``te_weight`` as in A1111."""

    name: str
    te_weight: float
    unet_weight: float


# A1111's extra-network pattern, for every kind: a hypernet tag is matched (and kept) as a
# whole so that a "<lora:...>" look-alike inside its arguments is not taken as a LoRA.
_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")
# "lyco" is the alias A1111 registers for the same LoRA loader (old LyCORIS prompts).
LORA_KINDS = frozenset({"lora", "lyco"})


def extract_lora_tags(prompt: str) -> tuple[str, list[LoraTag]]:
    """Remove ``<lora:...>`` tags from ``prompt`` and return (remaining text, tags in order).

    Accepted forms, as A1111: ``<lora:name>``, ``<lora:name:te>``, ``<lora:name:te:unet>``,
    and ``te=``/``unet=`` arguments, which override positional ones. Only the tags are removed;
    surrounding spaces and commas stay, as in A1111. Other kinds (``<hypernet:...>``) stay in
    the text. A weight that is not a finite number, or is past ±MAX_LORA_WEIGHT, raises
    InvalidParameter naming the tag.

    Differs from A1111: the name and the argument keys are stripped of surrounding spaces
    (A1111 would look up "name " and silently ignore " te=0.5"); a tag with no name or a
    non-finite weight is rejected instead of failing inside the loader. A fourth positional
    argument and ``dyn=`` (A1111's dynamic-dim option) are accepted and ignored.
    """
    tags: list[LoraTag] = []

    def take(m: re.Match[str]) -> str:
        if m.group(1) not in LORA_KINDS:
            return m.group(0)
        tags.append(_lora_tag(m.group(0), m.group(2)))
        return ""

    return _EXTRA_NETWORK.sub(take, prompt), tags


def _lora_tag(tag: str, args: str) -> LoraTag:
    positional: list[str] = []
    named: dict[str, str] = {}
    for item in args.split(":"):
        # A1111 splits with maxsplit=2, so "a=b=c" is positional there; kept for parity.
        parts = item.split("=", 2)
        if len(parts) == 2:
            named[parts[0].strip()] = parts[1]
        else:
            positional.append(item)

    name = positional[0].strip() if positional else ""
    if not name:
        raise InvalidParameter("prompt", tag, "LoRA tag has no name")
    te = _lora_weight(tag, positional[1]) if len(positional) > 1 else 1.0
    if "te" in named:
        te = _lora_weight(tag, named["te"])
    unet = _lora_weight(tag, positional[2]) if len(positional) > 2 else te
    if "unet" in named:
        unet = _lora_weight(tag, named["unet"])
    return LoraTag(name=name, te_weight=te, unet_weight=unet)


def _lora_weight(tag: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise InvalidParameter("prompt", tag, f"LoRA weight {raw!r} is not a number") from None
    if not math.isfinite(value):
        raise InvalidParameter("prompt", tag, f"LoRA weight {raw!r} is not finite")
    if abs(value) > MAX_LORA_WEIGHT:
        raise InvalidParameter("prompt", tag, f"LoRA weight {raw!r} is outside ±{MAX_LORA_WEIGHT:g}")
    return value


@dataclass
class PromptChunk:
    """``chunk_length + 2`` token ids (bos, body, eos) and one emphasis weight per id."""

    tokens: list[int]
    weights: list[float]


def chunk_prompt(
    parsed: list[tuple[str, float]],
    tokenize: Callable[[list[str]], list[list[int]]],
    *,
    bos: int,
    eos: int,
    pad: int,
    comma: int | None,
    chunk_length: int = 75,
    comma_backtrack: int = 20,
) -> list[PromptChunk]:
    """Cut a parsed prompt into CLIP-sized chunks as A1111's ``tokenize_line`` does.

    ``tokenize`` gets every run's text in one call and returns ids without bos/eos. Prompts are
    never truncated: a full chunk starts the next one, and a ``("BREAK", -1.0)`` run ends the
    current chunk even if it is empty. When a chunk is full and its last comma is at most
    ``comma_backtrack`` tokens back, the tokens after that comma move to the next chunk
    (0 disables this; ``comma=None`` means the vocabulary has no comma token). Each chunk is
    ``[bos] + body + eos padding + [eos]`` with weight 1.0 outside the body. When ``pad != eos``
    (OpenCLIP-G in SDXL) every id after the first eos becomes ``pad``, as A1111's
    ``process_tokens`` does. Textual-inversion embeddings are not handled here.
    """
    if chunk_length < 1:
        raise ValueError(f"chunk_length must be at least 1, got {chunk_length}")
    if comma_backtrack < 0:
        raise ValueError(f"comma_backtrack must be >= 0, got {comma_backtrack}")
    id_lists = tokenize([text for text, _ in parsed])
    if len(id_lists) != len(parsed):
        raise ValueError(f"tokenize returned {len(id_lists)} id lists for {len(parsed)} texts")

    chunks: list[PromptChunk] = []

    def close(body: list[int], body_weights: list[float]) -> None:
        fill = chunk_length - len(body)
        chunks.append(
            PromptChunk(
                tokens=[bos, *body, *([eos] * fill), eos],
                weights=[1.0, *body_weights, *([1.0] * fill), 1.0],
            )
        )

    body: list[int] = []
    body_weights: list[float] = []
    last_comma = -1  # index in `body` of the latest comma, -1 when none since the chunk began
    for ids, (text, weight) in zip(id_lists, parsed):
        if text == "BREAK" and weight == BREAK_WEIGHT:
            close(body, body_weights)
            body, body_weights, last_comma = [], [], -1
            continue
        for token in ids:
            if comma is not None and token == comma:
                last_comma = len(body)
            elif (
                comma_backtrack
                and len(body) == chunk_length
                and last_comma != -1
                and len(body) - last_comma <= comma_backtrack
            ):
                cut = last_comma + 1
                close(body[:cut], body_weights[:cut])
                body, body_weights, last_comma = body[cut:], body_weights[cut:], -1
            # A comma arriving at a full chunk is not a backtrack point (the branch above is an
            # elif), and the chunk break below forgets it: A1111 behaves the same way.
            if len(body) == chunk_length:
                close(body, body_weights)
                body, body_weights, last_comma = [], [], -1
            body.append(token)
            body_weights.append(weight)
    if body or not chunks:
        close(body, body_weights)

    if pad != eos:
        for chunk in chunks:
            first_eos = chunk.tokens.index(eos)
            tail = len(chunk.tokens) - first_eos - 1
            chunk.tokens[first_eos + 1 :] = [pad] * tail
    return chunks
