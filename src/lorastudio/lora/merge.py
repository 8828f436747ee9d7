"""Merging active LoRA adapters into the base weights, in place.

peft's merge computes each update as a new tensor (`B @ A`), scales it into another, then adds
it: three passes over a weight-sized tensor and two allocations per module. Here a plain LoRA of
a Linear or 1×1 convolution is merged with one `addmm_` into the weight itself (one pass, no
allocation), which is what makes a fused LoRA switch cheap (bench/generate.py, `lora_switch`,
two rank-16 SD 1.5 attention LoRAs on 2 cores: a loaded switch went from 3.1-3.3 to 0.19-0.23 CPU
s, 0.01x of one 512 px step).
Everything else (3×3 LoCon, DoRA and other variants, LoRA biases, fan-in/fan-out layouts, reduced
precision on a CPU where peft merges through float32, a scale beyond the dtype's range) goes
through peft's own `merge`.
"""

from __future__ import annotations

import torch

_SLOW_CPU_DTYPES = (torch.float16, torch.bfloat16)


def merge_adapters(pipe, components: list[str], names: list[str]) -> None:
    """Merge `names` (with their current scaling, i.e. set_adapters' weights) into every component's
    base weights, and record them as merged where peft and diffusers look (as `pipe.fuse_lora` does)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    merged: set[str] = set()
    for comp in components:
        module = getattr(pipe, comp, None)
        if module is None:
            continue
        for layer in module.modules():
            if not isinstance(layer, BaseTunerLayer):
                continue
            for name in names:
                if name in getattr(layer, "lora_A", {}) and name not in layer.merged_adapters:
                    merge_one(layer, name)
                    merged.add(name)
    pipe._merged_adapters = set(pipe._merged_adapters) | merged


def merge_one(layer, name: str) -> None:
    """Add adapter `name`'s update to `layer`'s base weight and mark it merged."""
    base = layer.get_base_layer()
    weight = base.weight
    a, b = layer.lora_A[name].weight, layer.lora_B[name].weight
    flat = _as_matrix(weight) if _plain(layer, name, weight, a, b) else None
    if flat is None:
        layer.merge(adapter_names=[name])
        return
    with torch.no_grad():
        flat.addmm_(b.reshape(b.shape[0], -1), a.reshape(a.shape[0], -1), alpha=float(layer.scaling[name]))
    layer.merged_adapters.append(name)


def _plain(layer, name: str, weight, a, b) -> bool:
    if name in getattr(layer, "lora_variant", {}) or getattr(layer, "lora_bias", {}).get(name):
        return False
    if getattr(layer, "fan_in_fan_out", False) or getattr(layer, "use_dora", {}).get(name):
        return False
    if not (a.dtype == b.dtype == weight.dtype and a.device == b.device == weight.device):
        return False
    if weight.device.type == "cpu" and weight.dtype in _SLOW_CPU_DTYPES:
        return False
    if not abs(float(layer.scaling[name])) <= torch.finfo(weight.dtype).max:
        return False  # addmm_ takes no scale the weight's dtype cannot hold; peft's product overflows to inf
    if weight.dim() == 2:
        return a.dim() == 2 and b.dim() == 2
    # A 1×1 convolution (A and B 1×1 too) is a matrix product over the channels.
    return weight.dim() == 4 and tuple(weight.shape[2:]) == (1, 1) and tuple(a.shape[2:]) == (1, 1) \
        and tuple(b.shape[2:]) == (1, 1)


def _as_matrix(weight):
    """`weight` as an (out, in) view sharing its storage, or None when its layout has no such view."""
    try:
        return weight.data.view(weight.shape[0], -1)
    except RuntimeError:
        return None
