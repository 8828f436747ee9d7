"""A1111 prompt editing and alternation: which prompt text each sampling step sees.

Syntax (A1111 `modules/prompt_parser.py`, v1.10, "new" scheduling, use_old_scheduling off):

- ``[from:to:when]`` -- `from` up to step `when`, then `to`; ``[to:when]`` -- nothing, then `to`;
  ``[from::when]`` -- `from`, then nothing. `when` with a "." is a fraction of the steps
  (``0.5`` of 20 is step 10), without one a step number; it is truncated and capped at `steps`.
- ``[a|b|c]`` -- alternation: a on step 1, b on step 2, c on step 3, a on step 4, ...
- Other brackets, parentheses and ``(x:1.2)`` are kept as text for the emphasis parser.

`prompt_schedule` returns A1111's `get_learned_conditioning_prompt_schedules` for one prompt: a list
of ``(end_at_step, text)``; the denoiser call with 0-based index k uses the first entry with
k <= end_at_step (A1111's `reconstruct_cond_batch`). A prompt A1111's grammar cannot parse (a
stray ``|`` outside brackets, say) is one entry, the text unchanged, as in A1111.

A1111 parses with a lark Earley grammar; this is a hand-written recursive-descent parser for the
same language (lark is not a dependency). Where a bracket cannot start an edit, an alternation or
an emphasis, it is text, as A1111's top-level rule ``/[][():]/+`` makes it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_NUMBER = re.compile(r"\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*\]")
_PLAIN_STOP = set("[]():|")


class _NoParse(Exception):
    pass


@dataclass
class _Scheduled:
    before: list | None
    after: list
    number: str
    when: int = 0


@dataclass
class _Alternate:
    options: list = field(default_factory=list)


def _plain(text: str, i: int) -> int:
    n = len(text)
    while i < n and text[i] not in _PLAIN_STOP:
        i += 2 if text[i] == "\\" and i + 1 < n else 1
    return i


def _sequence(text: str, i: int) -> tuple[list, int]:
    """A1111's `prompt`: text and nested constructs, up to a character that ends it."""
    out: list = []
    n = len(text)
    while i < n:
        c = text[i]
        if c in "[(":
            node, i = _bracket(text, i)
            out.extend(node)
        elif c in "]):|":
            break
        else:
            j = _plain(text, i)
            out.append(text[i:j])
            i = j
    return out, i


def _bracket(text: str, i: int) -> tuple[list, int]:
    """A construct starting at `text[i]` ("[" or "("); _NoParse if none fits."""
    if text[i] == "(":
        inner, j = _sequence(text, i + 1)
        if j < len(text) and text[j] == ")":
            return ["(", *inner, ")"], j + 1
        if j < len(text) and text[j] == ":":
            weight, k = _sequence(text, j + 1)
            if k < len(text) and text[k] == ")":
                return ["(", *inner, ":", *weight, ")"], k + 1
        raise _NoParse
    first, j = _sequence(text, i + 1)
    if j >= len(text):
        raise _NoParse
    if text[j] == "]":
        return ["[", *first, "]"], j + 1
    if text[j] == "|":
        options = [first]
        while j < len(text) and text[j] == "|":
            opt, j = _sequence(text, j + 1)
            options.append(opt)
        if j < len(text) and text[j] == "]":
            return [_Alternate(options)], j + 1
        raise _NoParse
    if text[j] == ":":
        m = _NUMBER.match(text, j + 1)
        if m:  # [to:when]
            return [_Scheduled(None, first, m.group(1))], m.end()
        second, k = _sequence(text, j + 1)
        if k < len(text) and text[k] == ":":
            m = _NUMBER.match(text, k + 1)
            if m:  # [from:to:when]
                return [_Scheduled(first, second, m.group(1))], m.end()
    raise _NoParse


def _parse(text: str) -> list:
    """A1111's `start`: constructs and text, with brackets and colons that fit nothing kept as text."""
    out: list = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in "[(":
            try:
                node, i = _bracket(text, i)
                out.extend(node)
                continue
            except _NoParse:
                out.append(c)
                i += 1
        elif c in "]):":
            out.append(c)
            i += 1
        elif c == "|":
            raise _NoParse  # A1111's grammar has no top-level "|": the prompt is not scheduled
        else:
            j = _plain(text, i)
            out.append(text[i:j])
            i = j
    return out


def _walk(nodes: list):
    for node in nodes:
        if isinstance(node, _Scheduled):
            yield node
            yield from _walk(node.before or [])
            yield from _walk(node.after)
        elif isinstance(node, _Alternate):
            yield node
            for opt in node.options:
                yield from _walk(opt)


def _render(nodes: list, step: int) -> str:
    parts = []
    for node in nodes:
        if isinstance(node, str):
            parts.append(node)
        elif isinstance(node, _Scheduled):
            parts.append(_render(node.before or [], step) if step <= node.when else _render(node.after, step))
        else:
            parts.append(_render(node.options[(step - 1) % len(node.options)], step))
    return "".join(parts)


def prompt_schedule(prompt: str, steps: int, hires_steps: int | None = None) -> list[tuple[int, str]]:
    """[(end_at_step, text), ...] for `steps` steps (the hires pass: `hires_steps`, with `when`
    counted over both passes, as A1111 does)."""
    if hires_steps is None:
        int_offset, flt_offset = 0, 0.0
    else:
        int_offset, flt_offset, steps = steps, 1.0, hires_steps
    if "[" not in prompt:  # edits and alternations need a "[": nothing to schedule
        return [(steps, prompt)]
    try:
        tree = _parse(prompt)
    except (_NoParse, RecursionError):
        # RecursionError: brackets nested hundreds deep; kept as text for the emphasis parser,
        # which clamps what such nesting would do.
        return [(steps, prompt)]
    ends = {steps}
    for node in _walk(tree):
        if isinstance(node, _Scheduled):
            v = float(node.number)
            v = (v - flt_offset) * steps if "." in node.number else v - int_offset
            node.when = min(steps, int(v))
            if node.when >= 1:
                ends.add(node.when)
        else:
            ends.update(range(1, steps + 1))
    return [(t, _render(tree, t)) for t in sorted(ends)]


def text_at(schedule: list[tuple[int, str]], call_index: int) -> str:
    """The text for the denoiser call with 0-based index `call_index` (A1111's reconstruct_cond_batch)."""
    for end, text in schedule:
        if call_index <= end:
            return text
    # Past the last end (second-order samplers call the model more often than `steps`), A1111's
    # target_index stays 0: the first text.
    return schedule[0][1]


def is_scheduled(prompt: str, steps: int) -> bool:
    return len(prompt_schedule(prompt, steps)) > 1
