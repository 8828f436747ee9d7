"""The loss math: targets, min-SNR weights, masks and flow-matching timesteps."""

import pytest
import torch
from diffusers import DDPMScheduler

from lorastudio.models.objectives import (ddpm_noised, flow_noised, flow_sigmas, sample_generators,
                                            weighted_mse)


def sched(prediction="epsilon"):
    return DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                         prediction_type=prediction)


# Element-wise arithmetic only (no reduction across the batch): equal per sample bit for bit.
@pytest.mark.pixels
def test_noise_depends_on_the_sample_not_on_how_the_batch_is_split():
    lat = torch.randn(4, 4, 8, 8)
    whole = ddpm_noised(sched(), lat, sample_generators(1, 5, 0, [0, 1, 2, 3]))
    half = ddpm_noised(sched(), lat[2:], sample_generators(1, 5, 0, [2, 3]))
    assert torch.equal(whole.noisy[2:], half.noisy) and torch.equal(whole.timesteps[2:], half.timesteps)


def test_epsilon_and_v_prediction_targets():
    lat = torch.randn(2, 4, 8, 8)
    eps = ddpm_noised(sched("epsilon"), lat, sample_generators(0, 0, 0, [0, 1]))
    v = ddpm_noised(sched("v_prediction"), lat, sample_generators(0, 0, 0, [0, 1]))
    s = sched()
    ac = s.alphas_cumprod[eps.timesteps].view(-1, 1, 1, 1)
    noise = eps.target
    assert torch.allclose(eps.noisy, ac.sqrt() * lat + (1 - ac).sqrt() * noise, atol=1e-5)
    assert torch.allclose(v.target, ac.sqrt() * noise - (1 - ac).sqrt() * lat, atol=1e-5)


def test_min_snr_gamma_caps_low_noise_weights():
    lat = torch.zeros(64, 1, 2, 2)
    nb = ddpm_noised(sched(), lat, sample_generators(0, 0, 0, list(range(64))), min_snr_gamma=5.0)
    ac = sched().alphas_cumprod[nb.timesteps]
    snr = ac / (1 - ac)
    assert torch.allclose(nb.weights, torch.clamp(snr, max=5.0) / snr)
    assert float(nb.weights.max()) <= 1.0 and float(nb.weights.min()) < 1.0


def test_masked_loss_ignores_transparent_pixels():
    pred, target = torch.zeros(1, 1, 2, 2), torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    mask = torch.tensor([[[[0.0, 0.0], [1.0, 1.0]]]])
    assert weighted_mse(pred, target, torch.ones(1)) == pytest.approx(0.5)
    assert weighted_mse(pred, target, torch.ones(1), mask) == pytest.approx(0.0)


@pytest.mark.parametrize("sampling", ["uniform", "sigmoid", "shift"])
def test_flow_matching_sigmas_and_target(sampling):
    gens = sample_generators(3, 1, 0, list(range(256)))
    s = flow_sigmas(gens, sampling=sampling, shift=3.0)
    assert float(s.min()) > 0 and float(s.max()) < 1
    if sampling == "shift":  # shifting pushes timesteps towards noise
        plain = flow_sigmas(sample_generators(3, 1, 0, list(range(256))), sampling="sigmoid", shift=1.0)
        assert float(s.mean()) > float(plain.mean())
    lat = torch.randn(2, 4, 4, 4)
    nb = flow_noised(lat, sample_generators(0, 0, 0, [0, 1]), sampling=sampling, shift=3.0)
    sig = nb.timesteps.view(-1, 1, 1, 1)
    noise = nb.target + lat
    assert torch.allclose(nb.noisy, (1 - sig) * lat + sig * noise, atol=1e-5)
