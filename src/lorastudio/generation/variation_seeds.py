"""A1111's variation seeds: `subseed`, `subseed_strength`, `seed_resize_from_w/h`.

Byte-compatible with A1111 v1.10 `modules/rng.py` (ImageRNG.first and slerp), because a PNG's
`Variation seed` must give the same noise here:

- the seed's noise and the variation seed's noise are mixed by spherical interpolation, per
  channel and latent column (A1111's slerp normalises over dim 1 of a [C, H, W] tensor);
  strength 0 is the seed's noise, 1 the variation seed's;
- when the two are nearly parallel (cosine above 0.9995) A1111 falls back to
  `low * strength + high * (1 - strength)`, weights the other way round from the slerp; kept,
  since that is what A1111 computes;
- `Seed resize from WxH`: the noise is made at that size and pasted, centred, into the noise of
  the real size (cropped when larger), so a seed keeps its composition at another size.

img2img and the hires fix's second pass use the same noise (A1111 makes an ImageRNG with the
variation settings for both). diffusers' img2img and inpaint pipelines draw their noise from the
generators themselves and hand it to the scheduler's `add_noise` (FLUX: `scale_noise`); `given_noise`
swaps it there for the variation noise, on the call's own scheduler. The draw still happens, so
the generators advance past it as A1111's do past `first()`, and later draws (ancestral samplers)
follow as in A1111.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any

import torch

from lorastudio.core.params import GenerationParams
from lorastudio.generation.noise import all_seeds, initial_noise, resolve_seed, seeded_generators

LATENT_FACTOR = 8


def uses_variation(params: GenerationParams) -> bool:
    return params.subseed_strength != 0 or _resized(params)


def _resized(params: GenerationParams) -> bool:
    return params.seed_resize_from_w > 0 and params.seed_resize_from_h > 0


def subseeds_for(params: GenerationParams, count: int) -> list[int]:
    """One variation seed per image, counting up as the seeds do (A1111's all_subseeds)."""
    return all_seeds(resolve_seed(params.subseed), count)


def slerp(val: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * val + high * (1 - val)  # sic: A1111's fallback
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - val) * omega) / so).unsqueeze(1) * low + (torch.sin(val * omega) / so).unsqueeze(1) * high


def _randn(seed: int, shape) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=torch.Generator("cpu").manual_seed(seed))


def seeded_noise(params: GenerationParams, seeds: list[int], subseeds: list[int], shape: tuple[int, ...]):
    """(latents [len(seeds), *shape], generators): `initial_noise`, with A1111's variation applied."""
    if not uses_variation(params):
        return initial_noise(seeds, shape)
    gens = seeded_generators(seeds)
    c, h, w = shape
    noise_shape = (c, params.seed_resize_from_h // LATENT_FACTOR, params.seed_resize_from_w // LATENT_FACTOR) \
        if _resized(params) else tuple(shape)
    out = []
    for seed, subseed, gen in zip(seeds, subseeds, gens):
        sub = _randn(subseed, noise_shape) if params.subseed_strength != 0 else None
        if noise_shape != tuple(shape):
            noise = _randn(seed, noise_shape)
        else:
            noise = torch.randn(noise_shape, generator=gen)
        if sub is not None:
            noise = slerp(params.subseed_strength, noise, sub)
        if noise_shape != tuple(shape):
            x = torch.randn(tuple(shape), generator=gen)
            dx, dy = (w - noise_shape[2]) // 2, (h - noise_shape[1]) // 2
            cw = noise_shape[2] if dx >= 0 else noise_shape[2] + 2 * dx
            ch = noise_shape[1] if dy >= 0 else noise_shape[1] + 2 * dy
            tx, ty = max(dx, 0), max(dy, 0)
            sx, sy = max(-dx, 0), max(-dy, 0)
            x[:, ty:ty + ch, tx:tx + cw] = noise[:, sy:sy + ch, sx:sx + cw]
            noise = x
        out.append(noise)
    return torch.stack(out), gens


def variation_infotext(params: GenerationParams, subseed: int) -> dict[str, Any]:
    """A1111's keys, written only when they are in effect."""
    strength = params.subseed_strength
    return {
        "Variation seed": subseed if strength != 0 else None,
        "Variation seed strength": (int(strength) if float(strength).is_integer() else strength) if strength else None,
        "Seed resize from": f"{params.seed_resize_from_w}x{params.seed_resize_from_h}" if _resized(params) else None,
    }


def variation_noise(params: GenerationParams, seeds: list[int], subseeds: list[int], shape) -> torch.Tensor | None:
    """The noise img2img / the hires pass start from, or None when no variation is asked for (the
    pipeline's own draw from each seed is then exactly A1111's noise)."""
    if not uses_variation(params):
        return None
    return seeded_noise(params, seeds, subseeds, tuple(shape))[0]


@contextlib.contextmanager
def given_noise(pipe, noise: torch.Tensor | None):
    """Within the block, the pipeline's scheduler noises the init latents with `noise` (see the module
    docstring). The scheduler is the call's own (built for it), so nothing shared is changed."""
    if noise is None:
        yield
        return
    scheduler = pipe.scheduler
    patched = []
    if hasattr(scheduler, "add_noise"):
        original_add = scheduler.add_noise

        def add_noise(original_samples, drawn, timesteps):
            return original_add(original_samples, noise.to(drawn), timesteps)
        scheduler.add_noise = add_noise
        patched.append("add_noise")
    if hasattr(scheduler, "scale_noise"):
        original_scale = scheduler.scale_noise

        def scale_noise(sample, timestep, drawn=None):
            return original_scale(sample, timestep, noise.to(drawn if drawn is not None else sample))
        scheduler.scale_noise = scale_noise
        patched.append("scale_noise")
    try:
        yield
    finally:
        for name in patched:
            del scheduler.__dict__[name]


def given_latents(pipe, noise: torch.Tensor | None, strength: float, like: torch.Tensor) -> dict:
    """Inpaint pipelines at strength 1 start from the noise alone, without `add_noise`; they take it as
    `latents` instead (their `prepare_latents` has `is_strength_max` for that case). `like`: the init
    latents, whose device and dtype (the denoiser's) the pipeline keeps."""
    if noise is None or strength < 1.0:
        return {}
    prepare = getattr(pipe, "prepare_latents", None)
    if prepare is None or "is_strength_max" not in inspect.signature(prepare).parameters:
        return {}
    return {"latents": noise.to(like)}
