"""The ControlNet extension's "reference" units (reference_only, reference_adain, reference_adain+attn).

They use no ControlNet model. The unit's picture (fitted to the generation's size) is encoded by the
VAE; at each step, before the UNet's own call, that latent is noised to the step's timestep and run
through the UNet in a "write" pass that stores, per BasicTransformerBlock, the input of its
self-attention (reference_only) and/or, per block of the UNet, the mean and variance of its output
(reference_adain). The UNet's own call then reads them: its self-attention also attends to the stored
features, and its blocks' outputs are renormalised to the stored statistics.

The behaviour is the extension's (scripts/hook.py, "AttentionInjection"), written here for diffusers:
- a block takes part when the unit's weight exceeds its rank: self-attentions sorted by width (widest
  first) are ranked i / n; blocks for AdaIN: the middle 0, the encoder's 2 * (1 - w / n), the decoder's
  2 * w / n (the extension's input_blocks 4.. and output_blocks ..-4, here the resnet/attention pairs of
  all down blocks but the first and all up blocks but the last);
- style fidelity mixes the halves of CFG: the conditional rows always see the reference; the
  unconditional rows get fidelity * (their plain result) + (1 - fidelity) * (the referenced one);
- the reference latent is noised with fresh noise at each step (here from a generator seeded with the
  generation's seed, so that the same call gives the same picture), on the DDPM schedule at the
  rounded timestep, as the extension's predict_q_sample does.
The guidance range follows diffusers' ControlNet rule (as lorastudio's ControlNet units do), so a
reference unit and a ControlNet unit with the same start / end act in the same steps.

Everything is installed for one denoising call and removed afterwards (`installed`): without an acting
reference unit the UNet runs untouched.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

REFERENCE_MODULES = ("reference_only", "reference_adain", "reference_adain+attn")
_ATTENTION = ("reference_only", "reference_adain+attn")
_ADAIN = ("reference_adain", "reference_adain+attn")
_RESIDUAL_KWARGS = ("down_block_additional_residuals", "mid_block_additional_residual",
                    "down_intrablock_additional_residuals")


def is_reference(module: str) -> bool:
    return module in REFERENCE_MODULES


@dataclass
class ReferenceUnit:
    """One acting reference unit: its scaled VAE latent [1, C, h, w] and what the extension reads from it."""

    module: str
    latent: Any
    weight: float
    guidance_start: float
    guidance_end: float
    style_fidelity: float  # after the family's and the control mode's adjustment

    def acts_at(self, step: int, steps: int) -> bool:
        # diffusers' controlnet_keep: the unit acts in step i when i/n >= start and (i+1)/n <= end
        return not (step / steps < self.guidance_start or (step + 1) / steps > self.guidance_end)


class _Machine:
    """What the hooks share during one call: which pass runs, and the current unit's weight / fidelity."""

    def __init__(self):
        self.attention_write = False
        self.adain_write = False
        self.weight = 0.0
        self.fidelity = 0.0
        self.uncond_rows = 0  # the first rows of the batch are CFG's unconditional half


class _ReferenceSelfAttention:
    """Wraps a self-attention's processor: stores its input in the write pass, attends to it after."""

    def __init__(self, original, machine: _Machine, rank: float):
        self.original, self.machine, self.rank = original, machine, rank
        self.bank: list = []
        self.fidelities: list[float] = []

    def _plain(self, attn, hidden_states, encoder_hidden_states, attention_mask, temb, args, kwargs):
        if temb is not None:
            kwargs = {**kwargs, "temb": temb}
        return self.original(attn, hidden_states, *args, encoder_hidden_states=encoder_hidden_states,
                             attention_mask=attention_mask, **kwargs)

    def __call__(self, attn, hidden_states, *args, encoder_hidden_states=None, attention_mask=None, temb=None,
                 **kwargs):
        m = self.machine
        if m.attention_write:
            if m.weight > self.rank:
                self.bank.append(hidden_states.detach().clone())
                self.fidelities.append(m.fidelity)
            return self._plain(attn, hidden_states, encoder_hidden_states, attention_mask, temb, args, kwargs)
        if not self.bank:
            return self._plain(attn, hidden_states, encoder_hidden_states, attention_mask, temb, args, kwargs)
        import torch

        fidelity = sum(self.fidelities) / len(self.fidelities)
        context = torch.cat([hidden_states, *self.bank], dim=1)
        self.bank, self.fidelities = [], []
        referenced = self._plain(attn, hidden_states, context, attention_mask, temb, args, kwargs)
        if m.uncond_rows == 0 or fidelity <= 1e-5:
            return referenced
        uc = slice(0, m.uncond_rows)
        mixed = referenced.clone()
        mixed[uc] = self._plain(attn, hidden_states[uc], None, attention_mask, temb, args, kwargs)
        return fidelity * mixed + (1.0 - fidelity) * referenced


class _ReferenceAdaIN:
    """A forward hook on a UNet block: stores its output's statistics in the write pass, matches them after."""

    def __init__(self, machine: _Machine, rank: float):
        self.machine, self.rank = machine, rank
        self.means: list = []
        self.variances: list = []
        self.fidelities: list[float] = []

    def __call__(self, module, args, output):
        import torch

        x = output[0] if isinstance(output, tuple) else output
        m = self.machine
        if m.adain_write:
            if m.weight > self.rank:
                var, mean = torch.var_mean(x, dim=(2, 3), keepdim=True, correction=0)
                self.means.append(mean)
                self.variances.append(var)
                self.fidelities.append(m.fidelity)
            return None
        if not self.means:
            return None
        eps = 1e-6  # the extension's
        fidelity = sum(self.fidelities) / len(self.fidelities)
        var, mean = torch.var_mean(x, dim=(2, 3), keepdim=True, correction=0)
        std = torch.clamp(var, min=eps) ** 0.5
        ref_mean = sum(self.means) / len(self.means)
        ref_std = torch.clamp(sum(self.variances) / len(self.variances), min=eps) ** 0.5
        self.means, self.variances, self.fidelities = [], [], []
        matched = (x - mean) / std * ref_std + ref_mean
        y = matched
        if m.uncond_rows and fidelity > 1e-5:
            kept = matched.clone()
            kept[:m.uncond_rows] = x[:m.uncond_rows]
            y = fidelity * kept + (1.0 - fidelity) * matched
        y = y.to(x.dtype)
        return (y, *output[1:]) if isinstance(output, tuple) else y


def _self_attention_blocks(unet) -> list:
    from diffusers.models.attention import BasicTransformerBlock

    blocks = [b for b in unet.modules() if isinstance(b, BasicTransformerBlock) and not b.only_cross_attention]
    # the extension sorts by the width of the block (widest first); sorted() keeps the model's order otherwise
    return sorted(blocks, key=lambda b: -b.attn1.to_q.in_features)


def _adain_blocks(unet) -> list[tuple[Any, float]]:
    """(module whose output is an LDM UNet block's output, its rank), as the extension picks them."""

    def pairs(block, up: bool) -> list:
        n = len(block.resnets)
        attentions = getattr(block, "attentions", None)
        outs = [attentions[j] if attentions else block.resnets[j] for j in range(n)]
        if up and getattr(block, "upsamplers", None):
            outs[-1] = block.upsamplers[0]  # the LDM output block holds the upsampler
        return outs

    encoder = [m for block in unet.down_blocks[1:] for m in pairs(block, False)]
    decoder = [m for block in unet.up_blocks[:-1] for m in pairs(block, True)]
    ranked = [(unet.mid_block, 0.0)]
    ranked += [(m, 2.0 * (1.0 - w / len(encoder))) for w, m in enumerate(encoder)]
    ranked += [(m, 2.0 * w / len(decoder)) for w, m in enumerate(decoder)]
    return ranked


def _q_sample(alphas_cumprod, latent, timestep, noise):
    import torch

    t = torch.round(torch.as_tensor(timestep, dtype=torch.float32).reshape(-1)[:1]).long().clamp(
        0, len(alphas_cumprod) - 1)
    a = alphas_cumprod[t].to(latent.device, torch.float32).view(-1, 1, 1, 1)
    return (a.sqrt() * latent.float() + (1 - a).sqrt() * noise.to(latent.device, torch.float32))


@contextlib.contextmanager
def installed(pipe, unet, units: list[ReferenceUnit], *, seed: int, cfg: bool):
    """The reference units act on `unet` for the `pipe` calls made inside the block."""
    import torch
    from diffusers import DDPMScheduler

    units = [u for u in units if u.weight > 0 and u.guidance_end > u.guidance_start]
    if not units:
        yield
        return
    # the DDPM schedule of the model, whatever sampler runs (the extension's q_sample)
    alphas_cumprod = DDPMScheduler.from_config(pipe.scheduler.config).alphas_cumprod
    generator = torch.Generator("cpu").manual_seed(int(seed))
    machine = _Machine()
    attention = any(u.module in _ATTENTION for u in units)
    adain = any(u.module in _ADAIN for u in units)
    swapped, handles, calls = [], [], [0]
    blocks = _self_attention_blocks(unet) if attention else []
    adain_hooks = []

    def write_passes(module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        step = calls[0]
        calls[0] += 1
        steps = getattr(pipe, "_num_timesteps", None) or len(pipe.scheduler.timesteps)
        machine.uncond_rows = sample.shape[0] // 2 if cfg else 0
        rest = {k: v for k, v in kwargs.items() if k not in ("sample", "timestep", *_RESIDUAL_KWARGS)}
        rest_args = args[2:]
        for unit in units:
            if not unit.acts_at(step, steps):
                continue
            latent = unit.latent.expand(sample.shape[0], *unit.latent.shape[1:])
            noise = torch.randn(latent.shape, generator=generator, dtype=torch.float32)
            ref = _q_sample(alphas_cumprod, latent, timestep, noise)
            if sample.shape[1] > latent.shape[1]:
                # an inpainting UNet: an empty mask and the reference as the masked picture (the extension's)
                ref = torch.cat([ref, torch.zeros_like(ref[:, :1]), latent.float()], dim=1)
            machine.attention_write = unit.module in _ATTENTION
            machine.adain_write = unit.module in _ADAIN
            machine.weight, machine.fidelity = unit.weight, unit.style_fidelity
            try:
                module.forward(ref.to(sample.dtype), timestep, *rest_args, **rest)  # no hooks: the UNet alone
            finally:
                machine.attention_write = machine.adain_write = False
        return None

    try:
        for i, block in enumerate(blocks):
            original = block.attn1.processor
            block.attn1.set_processor(_ReferenceSelfAttention(original, machine, i / len(blocks)))
            swapped.append((block.attn1, original))
        if adain:
            for target, rank in _adain_blocks(unet):
                hook = _ReferenceAdaIN(machine, rank)
                adain_hooks.append(hook)
                handles.append(target.register_forward_hook(hook))
        handles.append(unet.register_forward_pre_hook(write_passes, with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()
        for attn, original in swapped:
            attn.set_processor(original)
