"""Writing a LoRA in the diffusers / PEFT format that `pipe.load_lora_weights(folder)` reads.

Every pipeline class saves its own components, so one function serves all families; it sits
below the families (which expose it as `save_diffusers_lora`) and the training engine.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any

from lorastudio.core.atomic import disk_space_checked


def save_diffusers_lora(pipeline_cls, pipe, lora: dict[str, dict[str, Any]], folder: Path) -> Path:
    """pipeline_cls.save_lora_weights with the adapter configs, so alpha survives the round trip."""
    kwargs: dict[str, Any] = {}
    for comp, sd in lora.items():
        # PEFT names (lora_A / lora_B) as they are: diffusers' older "lora.down" renaming only
        # covers the attention projections and leaves FLUX files half in each convention.
        kwargs[f"{comp}_lora_layers"] = sd
        module = getattr(pipe, comp)
        cfg = getattr(module, "peft_config", {}).get("default")
        if cfg is not None:
            kwargs[f"{comp}_lora_adapter_metadata"] = cfg.to_dict()
    folder = Path(folder)
    staging = folder.with_name(folder.name + ".partial")
    with disk_space_checked(folder.parent):
        # diffusers writes this file itself, and its writer reports a full disk in its own words;
        # so the space is checked first (tensor bytes plus room for the header).
        needed = sum(t.numel() * t.element_size() for sd in lora.values() for t in sd.values()) + 1024**2
        folder.parent.mkdir(parents=True, exist_ok=True)
        if shutil.disk_usage(folder.parent).free < needed:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder.parent))
        if staging.exists():
            shutil.rmtree(staging)
        try:
            pipeline_cls.save_lora_weights(str(staging), safe_serialization=True, **kwargs)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
    return folder / "pytorch_lora_weights.safetensors"
