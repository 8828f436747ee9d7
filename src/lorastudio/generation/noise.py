"""Seeds and initial noise.

Noise is drawn on the CPU from each image's own seed, so a seed gives the same picture on any
device and whatever the batch size (image i of a batch uses seed + i, as A1111 does).
"""

from __future__ import annotations

import secrets

import torch

from lorastudio.core.params import SEED_MAX


def resolve_seed(seed: int) -> int:
    return secrets.randbelow(SEED_MAX + 1) if seed == -1 else seed


def all_seeds(seed: int, count: int) -> list[int]:
    # A1111 does not wrap; we keep seeds inside the 32-bit range users can type back in.
    return [(seed + i) % (SEED_MAX + 1) for i in range(count)]


def initial_noise(seeds: list[int], shape: tuple[int, ...], dtype=torch.float32):
    """Return (latents [len(seeds), *shape], generators advanced past the initial draw).

    The same generators are handed to the pipeline for the per-step noise of ancestral and SDE
    samplers, which reproduces what diffusers does when it draws latents itself.
    """
    gens = seeded_generators(seeds)
    latents = torch.cat([torch.randn((1, *shape), generator=g, dtype=dtype) for g in gens])
    return latents, gens


def seeded_generators(seeds: list[int]) -> list:
    """One CPU generator per image, seeded with that image's seed (img2img pipelines draw the noise
    from them themselves: the same first draw initial_noise makes)."""
    return [torch.Generator("cpu").manual_seed(s) for s in seeds]
