"""Per-step conditioning for A1111 prompt editing ``[from:to:when]`` and alternation ``[a|b]``.

The schedule itself is pure (core/prompt_schedule.py). Here each distinct (prompt, negative) text
pair is encoded once, and the pipeline's own tensors are swapped between denoiser calls through
diffusers' `callback_on_step_end`: the embeddings the UNet sees on call k are those of the text
A1111 picks for call k (`reconstruct_cond_batch`). The names swapped are the ones the pipeline
declares in `_callback_tensor_inputs` (``prompt_embeds``, and SDXL's pooled ``add_text_embeds``);
a pipeline whose conditioning cannot be swapped that way (FLUX's) refuses scheduled prompts by name.

A prompt whose schedule has one entry is simply replaced by that entry's text ("[cat:dog:0]" is
"dog"), for every family.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from lorastudio.core.errors import InvalidParameter
from lorastudio.core.prompt_schedule import prompt_schedule, text_at

# Conditioning kwargs a family returns -> how the pipeline holds them during the loop.
_SWAPPABLE = {"prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds",
              "guidance_scale"}


@dataclass
class StepConditioning:
    """The texts per denoiser call and their encodings."""

    positive: list[tuple[int, str]]
    negative: list[tuple[int, str]]
    encode: Any  # (prompt, negative) -> Conditioning
    _cache: dict = field(default_factory=dict)

    @property
    def static(self) -> bool:
        return len(self.positive) == 1 and len(self.negative) == 1

    def texts_at(self, call: int) -> tuple[str, str]:
        return text_at(self.positive, call), text_at(self.negative, call)

    def kwargs_at(self, call: int) -> dict:
        pair = self.texts_at(call)
        if pair not in self._cache:
            with torch.no_grad():
                self._cache[pair] = self.encode(*pair).kwargs
        return self._cache[pair]

    def tensor_names(self, pipe) -> list[str]:
        names = ["prompt_embeds"]
        if "pooled_prompt_embeds" in self.kwargs_at(0):
            names.append("add_text_embeds")
        return names

    def tensors_at(self, call: int, pipe, current: dict) -> dict:
        """The pipeline's loop tensors for denoiser call `call`, shaped like `current`'s."""
        kw = self.kwargs_at(call)
        cfg = bool(getattr(pipe, "do_classifier_free_guidance", True))
        out = {}
        pairs = [("prompt_embeds", "prompt_embeds", "negative_prompt_embeds"),
                 ("add_text_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")]
        for name, pos, neg in pairs:
            if name not in current:
                continue
            ref = current[name]
            images = ref.shape[0] // (2 if cfg else 1)
            parts = [kw[neg], kw[pos]] if cfg else [kw[pos]]
            tensor = torch.cat([p.repeat(images, *([1] * (p.ndim - 1))) for p in parts])
            out[name] = tensor.to(ref.device, ref.dtype)
        return out


def scheduled_conditioning(family, pipe, prompt: str, negative: str, steps: int, *, clip_skip: int,
                           cfg_scale: float, guidance: float, hires_steps: int | None = None,
                           cache=None) -> StepConditioning:
    """`cache(prompt, negative, encode)`: an encoding kept across requests (the fast mode's), or None."""
    def encode(p: str, n: str):
        def run():
            return family.encode_prompts(pipe, p, n, clip_skip=clip_skip, cfg_scale=cfg_scale, guidance=guidance)
        return run() if cache is None else cache(p, n, run)

    sc = StepConditioning(prompt_schedule(prompt, steps, hires_steps), prompt_schedule(negative, steps, hires_steps),
                          encode)
    if not sc.static:
        keys = set(sc.kwargs_at(0))
        declared = set(getattr(pipe, "_callback_tensor_inputs", ()))
        if not keys <= _SWAPPABLE or not set(sc.tensor_names(pipe)) <= declared:
            raise InvalidParameter("prompt", prompt[:80], f"prompt editing and alternation are not available for "
                                   f"{family.title} models yet; give a plain prompt")
    return sc


def step_callback_inputs(sc: StepConditioning | None, pipe) -> list[str]:
    return [] if sc is None or sc.static else sc.tensor_names(pipe)


def swap_for_next_call(sc: StepConditioning | None, pipe, step: int, kwargs: dict) -> dict:
    """In `callback_on_step_end` after loop iteration `step`: the tensors for call step + 1."""
    if sc is None or sc.static:
        return kwargs
    kwargs.update(sc.tensors_at(step + 1, pipe, kwargs))
    return kwargs
