"""Optimizers and learning-rate schedules by name (the names kohya and fal users know)."""

from __future__ import annotations

from lorastudio.core.errors import InvalidParameter


def build_optimizer(name: str, param_groups: list[dict], *, lr: float, weight_decay: float, device: str):
    import torch

    if name == "adamw":
        # One fused kernel for every LoRA tensor instead of a Python loop over hundreds of small ones
        # (measured: 384 rank-4 SD 1.5 tensors, 5.2 ms per step looped, 1.4 ms fused, on one CPU core).
        return torch.optim.AdamW(param_groups, lr=lr, weight_decay=weight_decay,
                                 fused=True if _fused_adamw_ok(param_groups, device) else None)
    if name == "adamw8bit":
        if not device.startswith("cuda"):
            raise InvalidParameter("optimizer", name, "8-bit AdamW needs a CUDA GPU (bitsandbytes); use adamw here")
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise InvalidParameter("optimizer", name, "needs bitsandbytes: pip install 'lorastudio[gpu]'") from None
        return bnb.optim.AdamW8bit(param_groups, lr=lr, weight_decay=weight_decay)
    if name == "lion":
        from lion_pytorch import Lion

        return Lion(param_groups, lr=lr, weight_decay=weight_decay)
    if name == "prodigy":
        from prodigyopt import Prodigy

        # Prodigy estimates the step size itself; kohya/fal users pass lr=1 with it.
        return Prodigy(param_groups, lr=lr, weight_decay=weight_decay)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(param_groups, lr=lr, weight_decay=weight_decay, relative_step=False,
                         scale_parameter=False, warmup_init=False)
    raise InvalidParameter("optimizer", name, "unknown optimizer; use adamw, adamw8bit, lion, prodigy or adafactor")


def _fused_adamw_ok(param_groups: list[dict], device: str) -> bool:
    """torch's fused AdamW runs on CPU and CUDA tensors of floating point types."""
    kinds = {device.split(":")[0]} | {p.device.type for g in param_groups for p in g["params"]}
    return kinds <= {"cpu", "cuda"} and all(p.is_floating_point() for g in param_groups for p in g["params"])


def build_lr_scheduler(name: str, optimizer, *, warmup: int, total_steps: int):
    from diffusers.optimization import get_scheduler

    if name == "constant" and warmup:
        name = "constant_with_warmup"
    return get_scheduler(name, optimizer=optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
