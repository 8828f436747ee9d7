"""A1111's `discard_next_to_last_sigma` for the DPM2 samplers, on diffusers' KDPM2 schedulers.

A1111 (modules/sd_samplers_kdiffusion.py) computes the noise levels of DPM2 and DPM2 a for
steps + 1 and drops the next-to-last one, so the last step goes from a mid-level straight to 0
instead of spending a whole second-order step on the tiny last level. diffusers' KDPM2
schedulers have no such option; the subclasses below compute their usual levels for n + 1
steps, drop that level (and its timestep), and rebuild the interleaved second-order arrays the
way each class's own `set_timesteps` builds them (re-stated here so the levels are A1111's).
"""

from __future__ import annotations

import numpy as np
import torch


def _first_order(sched) -> tuple[np.ndarray, np.ndarray]:
    """The distinct levels (without the final 0) and their timesteps of a set_timesteps call."""
    sigmas = torch.cat([sched.sigmas[:1], sched.sigmas[1:-1:2]]).cpu().numpy().astype(np.float64)
    timesteps = torch.cat([sched.timesteps[:1], sched.timesteps[2::2]]).cpu().numpy()
    return sigmas[:-1], timesteps


def _drop_next_to_last(sched, num_inference_steps, device, num_train_timesteps, parent):
    parent.set_timesteps(sched, num_inference_steps + 1, device=device, num_train_timesteps=num_train_timesteps)
    sigmas, timesteps = _first_order(sched)
    # The levels list has n + 1 entries before the final 0; the next-to-last of the full list
    # (with the 0) is the last of these.
    return sigmas[:-1], timesteps[:-1]


def discarding_class(cls):
    """`cls` (KDPM2DiscreteScheduler or KDPM2AncestralDiscreteScheduler) with A1111's discard."""
    ancestral = "Ancestral" in cls.__name__

    def set_timesteps(self, num_inference_steps, device=None, num_train_timesteps=None):
        sigmas, timesteps = _drop_next_to_last(self, num_inference_steps, device, num_train_timesteps, cls)
        self.num_inference_steps = num_inference_steps
        (_rebuild_ancestral if ancestral else _rebuild)(self, sigmas, timesteps, device)

    return type(f"A1111{cls.__name__}", (cls,), {"set_timesteps": set_timesteps, "__doc__": __doc__})


def _rebuild(self, sigmas_np, timesteps_np, device):
    # As KDPM2DiscreteScheduler.set_timesteps after its levels are chosen.
    log_sigmas = self.log_sigmas.cpu()
    sigmas = torch.from_numpy(np.concatenate([sigmas_np, [0.0]]).astype(np.float32)).to(device=device)
    sigmas_interpol = sigmas.log().lerp(sigmas.roll(1).log(), 0.5).exp()
    self.sigmas = torch.cat([sigmas[:1], sigmas[1:].repeat_interleave(2), sigmas[-1:]])
    self.sigmas_interpol = torch.cat([sigmas_interpol[:1], sigmas_interpol[1:].repeat_interleave(2),
                                      sigmas_interpol[-1:]])
    timesteps = torch.from_numpy(timesteps_np).to(device)
    t_interpol = np.array([self._sigma_to_t(s, log_sigmas) for s in sigmas_interpol.cpu()])
    t_interpol = torch.from_numpy(t_interpol).to(device, dtype=timesteps.dtype)
    interleaved = torch.stack((t_interpol[1:-1, None], timesteps[1:, None]), dim=-1).flatten()
    self.timesteps = torch.cat([timesteps[:1], interleaved])
    _reset(self)


def _rebuild_ancestral(self, sigmas_np, timesteps_np, device):
    # As KDPM2AncestralDiscreteScheduler.set_timesteps after its levels are chosen.
    log_sigmas = self.log_sigmas.cpu()
    sigmas = torch.from_numpy(np.concatenate([sigmas_np, [0.0]]).astype(np.float32)).to(device=device)
    sigmas_next = sigmas.roll(-1)
    sigmas_next[-1] = 0.0
    sigmas_up = (sigmas_next**2 * (sigmas**2 - sigmas_next**2) / sigmas**2) ** 0.5
    sigmas_down = (sigmas_next**2 - sigmas_up**2) ** 0.5
    sigmas_down[-1] = 0.0
    sigmas_interpol = sigmas.log().lerp(sigmas_down.log(), 0.5).exp()
    sigmas_interpol[-2:] = 0.0

    def inter(x):
        return torch.cat([x[:1], x[1:].repeat_interleave(2), x[-1:]])

    self.sigmas, self.sigmas_interpol = inter(sigmas), inter(sigmas_interpol)
    self.sigmas_up, self.sigmas_down = inter(sigmas_up), inter(sigmas_down)
    timesteps = torch.from_numpy(timesteps_np).to(device)
    t_interpol = np.array([self._sigma_to_t(s, log_sigmas) for s in sigmas_interpol.cpu()])
    t_interpol = torch.from_numpy(t_interpol).to(device, dtype=timesteps.dtype)
    interleaved = torch.stack((t_interpol[:-2, None], timesteps[1:, None]), dim=-1).flatten()
    self.timesteps = torch.cat([timesteps[:1], interleaved])
    _reset(self)


def _reset(self):
    self.sample = None
    self._step_index = None
    self._begin_index = None
    self.sigmas = self.sigmas.to("cpu")  # as diffusers: stepping reads them on the CPU
