"""Noise, targets and loss weights: the math shared by the families' training steps.

Each function takes an explicit torch.Generator, drawn per step from (seed, step), so a run
is reproducible and a resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class NoisedBatch:
    noisy: torch.Tensor
    timesteps: torch.Tensor
    target: torch.Tensor
    weights: torch.Tensor  # one loss weight per sample


def sample_generators(seed: int, step: int, micro: int, sample_ids: list[int]) -> list[torch.Generator]:
    """One generator per sample of the global batch, so the noise a sample gets does not depend on
    how the batch is split across processes or accumulation steps."""
    return [torch.Generator("cpu").manual_seed((seed * 1_000_003 + step * 7919 + micro * 613 + j * 104_729) % (2**63))
            for j in sample_ids]


def _randn(shape, gens: list[torch.Generator]) -> torch.Tensor:
    return torch.stack([torch.randn(shape, generator=g, dtype=torch.float32) for g in gens])


def ddpm_noised(scheduler, latents: torch.Tensor, gens: list[torch.Generator], *, noise_offset: float = 0.0,
                min_snr_gamma: float | None = None) -> NoisedBatch:
    """Epsilon or v-prediction training target for DDPM-style models (SD 1.x, SDXL)."""
    b = latents.shape[0]
    noise = _randn(latents.shape[1:], gens)
    if noise_offset:
        # Lets the model learn overall brightness (very dark / light images), as kohya's noise_offset.
        noise = noise + noise_offset * _randn((latents.shape[1], 1, 1), gens)
    t = torch.cat([torch.randint(0, scheduler.config.num_train_timesteps, (1,), generator=g) for g in gens])
    noise = noise.to(latents.device, latents.dtype)
    t_dev = t.to(latents.device)
    noisy = scheduler.add_noise(latents, noise, t_dev)
    prediction = scheduler.config.prediction_type
    if prediction == "epsilon":
        target = noise
    elif prediction == "v_prediction":
        target = scheduler.get_velocity(latents, noise, t_dev)
    else:
        raise ValueError(f"prediction_type {prediction!r} is not supported for training")
    weights = torch.ones(b)
    if min_snr_gamma:
        ac = scheduler.alphas_cumprod[t]
        snr = ac / (1 - ac)
        gamma = torch.full_like(snr, float(min_snr_gamma))
        weights = torch.minimum(snr, gamma) / (snr + 1 if prediction == "v_prediction" else snr)
    return NoisedBatch(noisy, t_dev, target, weights.to(latents.device))


def flow_sigmas(gens: list[torch.Generator], *, sampling: str, shift: float) -> torch.Tensor:
    """Timesteps in (0, 1) for rectified-flow training: uniform, sigmoid (logit-normal) or shifted."""
    if sampling == "uniform":
        s = torch.cat([torch.rand((1,), generator=g) for g in gens])
    elif sampling == "sigmoid":
        s = torch.sigmoid(torch.cat([torch.randn((1,), generator=g) for g in gens]))
    elif sampling == "shift":
        s = torch.sigmoid(torch.cat([torch.randn((1,), generator=g) for g in gens]))
        s = (s * shift) / (1 + (shift - 1) * s)
    else:
        raise ValueError(f"timestep_sampling {sampling!r}")
    return s.clamp(1e-4, 1 - 1e-4)


def flow_noised(latents: torch.Tensor, gens: list[torch.Generator], *, sampling: str, shift: float) -> NoisedBatch:
    b = latents.shape[0]
    noise = _randn(latents.shape[1:], gens).to(latents.device, latents.dtype)
    sigmas = flow_sigmas(gens, sampling=sampling, shift=shift).to(latents.device, latents.dtype)
    s = sigmas.view(b, *([1] * (latents.dim() - 1)))
    noisy = (1 - s) * latents + s * noise
    return NoisedBatch(noisy, sigmas, noise - latents, torch.ones(b, device=latents.device))


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor,
                 mask: torch.Tensor | None = None, sample_weights: torch.Tensor | None = None) -> torch.Tensor:
    err = (pred.float() - target.float()) ** 2
    if mask is not None:
        mask = mask.to(err.device, err.dtype).expand_as(err)
        per_sample = (err * mask).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp_min(1e-6)
    else:
        per_sample = err.flatten(1).mean(1)
    if sample_weights is not None:
        weights = weights * sample_weights.to(weights.device, weights.dtype)
    return (per_sample * weights.to(per_sample.dtype)).mean()
