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
"""

from __future__ import annotations

from typing import Any

import torch

from lorastudio.core.errors import InvalidParameter
from lorastudio.core.params import GenerationParams
from lorastudio.generation.noise import all_seeds, initial_noise, resolve_seed, seeded_generators

LATENT_FACTOR = 8


def uses_variation(params: GenerationParams) -> bool:
    return params.subseed_strength != 0 or _resized(params)


def _resized(params: GenerationParams) -> bool:
    return params.seed_resize_from_w > 0 and params.seed_resize_from_h > 0


def check_supported(params: GenerationParams, where: str) -> None:
    """The second pass of the hires fix and img2img draw their noise inside diffusers' pipelines,
    which take no given noise: variation seeds there would not be A1111's, so they are refused."""
    if uses_variation(params):
        field = "subseed_strength" if params.subseed_strength != 0 else "seed_resize_from_w"
        raise InvalidParameter(field, getattr(params, field), f"variation seeds are not available with {where} yet")


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
