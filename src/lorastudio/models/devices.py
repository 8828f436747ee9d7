"""Device and precision choice, shared by generation, training and the model families.

Torch is imported inside the functions: `lorastudio --help` must not load it.
"""

from __future__ import annotations


def pick_device(setting: str) -> str:
    """The device for a `StudioSettings.device` value: "auto" picks CUDA, then MPS, then the CPU."""
    import torch

    if setting != "auto":
        return setting
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def torch_dtype(name: str):
    """The torch dtype for a precision name ("float32", "float16", "bfloat16")."""
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def cpu_does_bf16_fast() -> bool:
    """AVX512-BF16 or AMX: the CPU multiplies bf16 natively (oneDNN uses it); elsewhere bf16 is
    emulated and slower than float32."""
    import torch

    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, p, lambda: False)()) for p in probes)


# bf16 on a CPU pays when reading the frozen weights dominates the step: full-size SD 1.5 (4 GB of
# float32 weights) at 64 px, 2 cores, AVX512-BF16: 1.04 s/step in float32, 0.60 s in bf16. On small
# models the casts dominate instead: the bundled 14 MB base, 60 steps of batch 4, 3.8 CPU s in
# float32 against 5.5 s in bf16. Bases with fewer bytes than this train in float32 on CPUs.
CPU_BF16_FROM_BYTES = 1 << 30


def autocast_precision(device: str, *, weight_bytes: int) -> str:
    """The mixed precision that pays on `device` ("bf16", "fp16" or "no") for a base whose weights
    take `weight_bytes` on disk: bf16 on CUDA devices that do it, else fp16; bf16 on CPUs that
    multiply bf16 natively, for bases of CPU_BF16_FROM_BYTES or more; float32 elsewhere."""
    import torch

    kind = torch.device(device).type
    if kind == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if kind == "cpu" and weight_bytes >= CPU_BF16_FROM_BYTES and cpu_does_bf16_fast():
        return "bf16"
    return "no"
