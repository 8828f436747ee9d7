"""Composable prompts (``a cat AND a dog:0.5``) in a generation: A1111's multi-conditioning.

The split is pure (core/composable_prompts.py). Here each distinct sub-prompt gets its own
per-step conditioning (prompt editing works inside each, as in A1111, which schedules every
sub-prompt separately), and the family's `composable_guidance` turns the pipeline's CFG into
uncond + cfg * sum(w_i * (cond_i - uncond)). A plain prompt (one part at weight 1) takes the usual
path, untouched.

Sub-prompt conditionings of different lengths (past 75 tokens) are padded to the longest by
repeating their last vector, as A1111's `reconstruct_multicond_batch` does; the first sub-prompt
stays as the pipeline encodes any prompt (padded to the negative prompt's length).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from lorastudio.core.composable_prompts import split_composable
from lorastudio.core.errors import InvalidParameter
from lorastudio.generation.prompt_editing import StepConditioning, scheduled_conditioning


@dataclass
class ComposableGuidance:
    family: object
    first: StepConditioning
    others: list[StepConditioning]
    weights: list[float]  # per distinct sub-prompt, the first one's first

    def _extra_at(self, call: int) -> list[dict]:
        extra = [sc.kwargs_at(call) for sc in self.others]
        longest = max([self.first.kwargs_at(call)["prompt_embeds"].shape[1]]
                      + [kw["prompt_embeds"].shape[1] for kw in extra])
        out = []
        for kw in extra:
            emb = kw["prompt_embeds"]
            if emb.shape[1] < longest:
                emb = torch.cat([emb, emb[:, -1:].expand(-1, longest - emb.shape[1], -1)], dim=1)
            out.append({**kw, "prompt_embeds": emb})
        return out

    def hooks(self, pipe):
        return self.family.composable_guidance(pipe, self.weights, self._extra_at)


def composable_conditioning(family, pipe, prompt: str, negative: str, steps: int, *, clip_skip: int,
                            cfg_scale: float, guidance: float, hires_steps: int | None = None,
                            control=None, cache=None) -> tuple[StepConditioning, ComposableGuidance | None]:
    """(the pipeline's own per-step conditioning, the composable guidance or None for a plain prompt).
    `cache`: the fast mode's encoding cache, or None."""
    composable = split_composable(prompt)

    def schedule(text: str) -> StepConditioning:
        return scheduled_conditioning(family, pipe, text, negative, steps, clip_skip=clip_skip, cfg_scale=cfg_scale,
                                      guidance=guidance, hires_steps=hires_steps, cache=cache)

    if composable.is_plain:
        return schedule(composable.texts[0]), None
    try:
        family.composable_guidance(pipe, [], None)  # a family without CFG refuses here, by name
    except InvalidParameter:
        if len(composable.parts) == 1:
            # Without a negative prediction there is nothing to weigh a lone prompt against: its
            # ":number" tail ("16:9") stays text, as it always has for these families. AND is refused.
            return schedule(prompt), None
        raise
    if cfg_scale <= 1:
        raise InvalidParameter("cfg_scale", cfg_scale, "composable prompts (AND, or a trailing :weight) weigh each "
                               "sub-prompt against the negative prompt, which needs a CFG scale above 1")
    if control is not None:
        raise InvalidParameter("prompt", prompt[:80], "composable prompts (AND, or a trailing :weight) with "
                               "ControlNet units are not supported yet")
    first, *others = [schedule(text) for text in composable.texts]
    return first, ComposableGuidance(family, first, others, composable.weights_per_text())


def guidance_hooks(guidance: ComposableGuidance | None, pipe):
    return guidance.hooks(pipe) if guidance is not None else contextlib.nullcontext()
