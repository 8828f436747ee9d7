"""The one place `LoadOptions` are built from a models folder, for generation and training alike.

A FLUX.1 transformer-only file finds its autoencoder in models/VAE and its text encoders in
models/text_encoder (as Forge keeps them); building the options in one place means a file that
generates can also be trained, and the other way round.
"""

from __future__ import annotations

from pathlib import Path

from lorastudio.core.paths import ModelsRoot
from lorastudio.models.families.base import LoadOptions, ModelFamily


def load_options(root: ModelsRoot, *, device: str, dtype: str, allow_pickle: bool = False) -> LoadOptions:
    return LoadOptions(device=device, dtype=dtype, cache_dir=root.root / ".lorastudio-cache",
                       allow_pickle=allow_pickle, text_encoder_dir=root.text_encoders, vae_dir=root.vae)


def family_of(path: Path, options: LoadOptions) -> ModelFamily:
    """The family a checkpoint file or diffusers folder belongs to, from its header only (no weights read)."""
    from lorastudio.models.loader import detect_family, detect_folder_family, probe_checkpoint

    path = Path(path)
    if path.is_dir():
        return detect_folder_family(path)[0]
    _, shapes, _ = probe_checkpoint(path, options)
    return detect_family(path, shapes.keys())
