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
