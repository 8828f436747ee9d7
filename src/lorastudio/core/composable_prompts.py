"""A1111's composable prompts: ``a cat AND a dog:0.5`` (pure Python, no torch).

Byte-compatible with A1111 v1.10 `prompt_parser.get_multicond_prompt_list`, because a prompt
pasted from A1111 must be split into the same sub-prompts with the same weights:

- the prompt is split on the word ``AND`` (``\\bAND\\b``, upper case only);
- each part may end in ``:weight`` (a plain number, whitespace allowed around the colon); the
  text keeps its leading whitespace and loses the trailing one, the weight defaults to 1;
- equal texts share one entry (A1111 encodes each distinct text once); the weights of the parts
  are kept per part, in order, so ``a AND a`` counts the same text twice.

A1111 applies the weight split to every prompt, with or without ``AND``: ``a cat:0.5`` is the
text "a cat" at weight 0.5 (half the guidance), not the text "a cat:0.5". `is_plain` says when
the result is exactly one part at weight 1, i.e. when nothing needs combining.

The sampler then computes ``uncond + cfg * sum(weight_i * (cond_i - uncond))`` per image
(A1111's `CFGDenoiser.combine_denoised`); that part is the engine's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_AND = re.compile(r"\bAND\b")
_WEIGHT = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")


@dataclass(frozen=True)
class ComposablePrompt:
    texts: tuple[str, ...]  # distinct sub-prompt texts, in order of first appearance
    parts: tuple[tuple[int, float], ...]  # (index into texts, weight) per part, in prompt order

    @property
    def is_plain(self) -> bool:
        """One part at weight 1: the prompt is encoded and guided as usual."""
        return len(self.parts) == 1 and self.parts[0][1] == 1.0

    def weights_per_text(self) -> list[float]:
        """The summed weight of each distinct text (what the weighted sum of the parts amounts to)."""
        out = [0.0] * len(self.texts)
        for index, weight in self.parts:
            out[index] += weight
        return out


def split_composable(prompt: str) -> ComposablePrompt:
    texts: list[str] = []
    index_of: dict[str, int] = {}
    parts: list[tuple[int, float]] = []
    for sub in _AND.split(prompt):
        m = _WEIGHT.search(sub)
        text, weight = (m.group(1), float(m.group(2)) if m.group(2) is not None else 1.0) if m else (sub, 1.0)
        if text not in index_of:
            index_of[text] = len(texts)
            texts.append(text)
        parts.append((index_of[text], weight))
    return ComposablePrompt(tuple(texts), tuple(parts))
